"""Model-zoo conformance of the three bundles, checked offline: the zoo's JSON style, the metadata schema, the ids MONAI
tools and MONAI Label rely on, defaults that point at no path of this repository, the values a run records, the
model-card sections, and ONNX export with dynamic spatial axes."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from bundle_helpers import BUNDLES, REPO_ROOT, export_tool
from volssl.io import VolsslInputError

NAMES = ("coral_mri_segmentation", "sal_mri_segmentation", "crln_mri_segmentation")
SLICE_BUNDLES = NAMES[:2]
CONFIG_FILES = sorted(p for name in NAMES for p in (BUNDLES / name / "configs").glob("*.json"))
# the zoo's spleen_ct_segmentation train.json ids that MONAI Label and the zoo's CI read
TRAIN_IDS = ("bundle_root", "device", "dataset_dir", "output_dir", "network_def", "network", "train#trainer",
             "train#dataset#data", "train#handlers", "train#postprocessing", "train#key_metric", "train#inferer",
             "validate#evaluator", "validate#dataset#data", "validate#postprocessing", "validate#key_metric",
             "validate#inferer", "validate#handlers", "initialize", "run")
INFER_IDS = ("bundle_root", "device", "dataset_dir", "output_dir", "network_def", "network", "preprocessing",
             "postprocessing", "inferer", "dataset", "evaluator", "handlers", "initialize", "run")
MODEL_CARD_SECTIONS = ("Overview", "Data", "Training configuration", "Input", "Output", "Performance",
                       "MONAI bundle commands", "References", "License")
# overlays shipped in the repo (not in an export): their values must reach the training record
OVERLAY_NAMES = ("cpu_small.json", "adam.json", "pcl.json")


def _parser(path: Path):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(path))
    return parser


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: f"{p.parent.parent.name}/{p.name}")
def test_configs_in_zoo_json_style(path):
    text = path.read_text()
    assert text == json.dumps(json.loads(text), indent=4, ensure_ascii=False) + "\n", (
        f"{path} is not in the model-zoo style: run `python tools/export_bundle.py format bundles`")


def test_format_check_flags_an_unstyled_config(tmp_path):
    config = tmp_path / "configs" / "x.json"
    config.parent.mkdir()
    config.write_text('{"a": [1, 2]}')
    with pytest.raises(VolsslInputError, match="x.json"):
        export_tool().format(str(tmp_path), check=True)
    export_tool().format(str(tmp_path))
    assert config.read_text() == '{\n    "a": [\n        1,\n        2\n    ]\n}\n'


@pytest.mark.parametrize("name", NAMES)
def test_metadata_passes_the_zoo_schema(name):
    meta_path = BUNDLES / name / "configs" / "metadata.json"
    assert export_tool().metadata_problems(meta_path) == []
    meta = json.loads(meta_path.read_text())
    assert meta["schema"].endswith(export_tool().SCHEMA.name)
    # every declared package is on the package index (no project-internal package), and nothing else is needed
    assert set(meta["required_packages_version"]) == set(export_tool().REQUIRED_PACKAGES)
    assert meta["eval_metrics"] and all(isinstance(v, (int, float)) for v in meta["eval_metrics"].values())
    # measured on documented data: the sentence that says so is the one exports cut (they carry their own numbers)
    assert export_tool().RELEASE_METRICS_NOTE in meta["data_source"]
    channel_def = meta["network_data_format"]["outputs"]["pred"]["channel_def"]
    assert len(channel_def) == meta["network_data_format"]["outputs"]["pred"]["num_channels"]
    assert not any(v.startswith("class ") for v in channel_def.values())


def test_schema_copy_rejects_a_metadata_without_required_keys(tmp_path):
    meta = json.loads((BUNDLES / NAMES[0] / "configs" / "metadata.json").read_text())
    del meta["required_packages_version"]
    bad = tmp_path / "metadata.json"
    bad.write_text(json.dumps(meta))
    problems = export_tool().metadata_problems(bad)
    assert problems and "required_packages_version" in problems[0]


@pytest.mark.parametrize("name", NAMES)
def test_train_and_inference_ids(name):
    configs = BUNDLES / name / "configs"
    train, infer = _parser(configs / "train.json"), _parser(configs / "inference.json")
    assert [i for i in TRAIN_IDS if i not in train] == []
    assert [i for i in INFER_IDS if i not in infer] == []
    assert (configs / "multi_gpu_train.json").is_file()
    for parser in (train, infer):
        assert parser["dataset_dir"] == "/workspace/data"


@pytest.mark.parametrize("name", NAMES)
def test_defaults_point_at_no_path_of_this_repository(name):
    tops = sorted(p.name for p in REPO_ROOT.iterdir() if not p.name.startswith("."))
    for path in (BUNDLES / name / "configs").glob("*.json"):

        def strings(value):
            if isinstance(value, dict):
                for v in value.values():
                    yield from strings(v)
            elif isinstance(value, list):
                for v in value:
                    yield from strings(v)
            elif isinstance(value, str):
                yield value

        for text in strings(json.loads(path.read_text())):
            for top in tops:
                assert not text.startswith((f"{top}/", f"./{top}/")) and f"'{top}/" not in text, (path.name, text)


@pytest.mark.parametrize("name", NAMES)
def test_trained_values_cover_what_inference_and_overlays_set(name):
    """Every value an overlay (or a command line) may change that inference.json also has must be recorded with the
    weights, else an export could not rebuild the trained network."""
    configs = BUNDLES / name / "configs"
    train = json.loads((configs / "train.json").read_text())
    infer = json.loads((configs / "inference.json").read_text())
    recorded = set(train["trained_values"])
    assert recorded <= set(train), recorded - set(train)
    assert all(v == f"@{k}" for k, v in train["trained_values"].items())
    plain_infer = {k for k, v in infer.items() if not (isinstance(v, str) and v.startswith(("$", "@")))
                   and not isinstance(v, dict) and k not in ("imports", "initialize", "setup", "run", "handlers")}
    # channels_last is a memory layout: the same weights give the same network either way
    runtime_only = {"sw_batch_size", "overlap", "sw_mode", "input", "input_role", "bundle_root", "dataset_dir",
                    "channels_last"}
    assert (plain_infer & set(train)) - runtime_only <= recorded, (plain_infer & set(train)) - runtime_only - recorded
    for overlay in OVERLAY_NAMES:
        if (configs / overlay).is_file():
            keys = set(json.loads((configs / overlay).read_text())) & plain_infer
            assert keys - runtime_only <= recorded, (overlay, keys - runtime_only - recorded)


@pytest.mark.parametrize("name", NAMES)
def test_model_card_has_the_zoo_sections(name):
    text = (BUNDLES / name / "docs" / "README.md").read_text()
    headings = [line.lstrip("#").strip() for line in text.splitlines() if line.startswith("#")]
    missing = [s for s in MODEL_CARD_SECTIONS if not any(h.lower().startswith(s.lower()) for h in headings)]
    assert missing == []


def _onnx_roundtrip(name, overrides, shapes, tmp_path):
    """``monai.bundle onnx_export`` of the bundle's network_def with dynamic batch and spatial axes; onnxruntime's
    output equals eager PyTorch within 1e-4 on each input shape."""
    onnxruntime = pytest.importorskip("onnxruntime")
    from monai.bundle import ConfigParser, onnx_export

    configs = BUNDLES / name / "configs"
    parser = ConfigParser()
    parser.read_config(str(configs / "inference.json"))
    for key, value in overrides.items():
        parser[key] = value
    torch.manual_seed(0)
    net = parser.get_parsed_content("network_def").eval()
    ckpt = tmp_path / "model.pt"
    torch.save(net.state_dict(), ckpt)
    overlay = tmp_path / "overlay.json"
    overlay.write_text(json.dumps(overrides))
    axes = {0: "batch", **{i: f"spatial_{i}" for i in range(2, len(shapes[0]))}}
    onnx_path = tmp_path / "model.onnx"
    onnx_export(net_id="network_def", filepath=str(onnx_path), ckpt_file=str(ckpt),
                meta_file=str(configs / "metadata.json"), config_file=[str(configs / "inference.json"), str(overlay)],
                input_shape=list(shapes[0]),
                converter_kwargs={"input_names": ["image"], "output_names": ["pred"],
                                  "dynamic_axes": {"image": axes, "pred": axes}, "verify": False})
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    for shape in shapes:
        x = torch.randn(*shape)
        with torch.no_grad():
            expected = net(x).numpy()
        (got,) = session.run(None, {"image": x.numpy()})
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", SLICE_BUNDLES)
def test_onnx_export_slice_network(name, tmp_path):
    _onnx_roundtrip(name, {"features": 4}, [(2, 1, 48, 64), (1, 1, 32, 80)], tmp_path)


def test_onnx_export_crln_network(tmp_path):
    overrides = {"n_filters": 4, "num_prototypes": 4, "dropout": 0.0}
    _onnx_roundtrip("crln_mri_segmentation", overrides, [(1, 1, 32, 32, 16), (2, 1, 48, 32, 32)], tmp_path)


# -- the zoo's pull-request layout: weights fetched from large_files.yml's URLs ---------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def _served_pull_request(name: str, root: Path):
    """``name`` exported in the zoo's pull-request layout (``--without_weights``), its weights served by
    ``python -m http.server`` on 127.0.0.1 at the ``--weights_url`` the export wrote into ``large_files.yml``.

    Yields ``(bundle folder, weights folder)``; the initial network weights stand in for trained ones (the checks
    read files and shapes, not accuracy)."""
    import subprocess
    import sys
    import time
    import urllib.request
    import zipfile

    from monailabel_helpers import _initial_run, phantom_values

    run_dir = _initial_run(name, root / "run", phantom_values(name), {"0": "background", "1": "a", "2": "b", "3": "c"})
    port = _free_port()
    url = f"http://127.0.0.1:{port}/weights"
    zip_path = Path(export_tool().export(str(BUNDLES / name), str(run_dir), str(root / "dist"), weights_url=url,
                                         without_weights=True))
    weights = zip_path.with_name(zip_path.stem + "_weights")
    served = root / "served"
    (served / "weights").mkdir(parents=True)
    for path in weights.iterdir():
        (served / "weights" / path.name).write_bytes(path.read_bytes())
    with zipfile.ZipFile(zip_path) as zf:
        zf.extractall(root / "pr")
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory",
                               str(served)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"{url}/model.pt", timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        yield root / "pr" / name, weights
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture(scope="module")
def zoo_pull_request(tmp_path_factory):
    """CRLN in the zoo's pull-request layout, weights served on 127.0.0.1 (see :func:`_served_pull_request`)."""
    with _served_pull_request("crln_mri_segmentation", tmp_path_factory.mktemp("zoo_pr")) as served:
        yield served


def _zoo_verify_in_bundle(bundle: Path, mode: str) -> str:
    """The zoo's verify_bundle checks, run as its CI runs them: a fresh process with the bundle folder first on
    ``sys.path`` (the vendored volssl, not this repository's), the zoo schema from ``tools/schema`` (offline)."""
    import os
    import subprocess
    import sys

    tool = export_tool()
    code = ("import sys; sys.path.insert(0, '.'); from volssl.bundle.zoo import verify_bundle; "
            f"print(verify_bundle('.', {str(tool.SCHEMA)!r}, mode={mode!r}, schema_sha256={tool.SCHEMA_SHA256!r}))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=bundle, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONPATH=""))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout


def test_zoo_pull_request_fetches_weights_and_verifies(zoo_pull_request):
    """Acceptance: the zoo's `verify_bundle -m min` on the weights-less folder downloads the weights from the URLs
    (hash checked) and passes; the files then match the manifest and large_files.yml."""
    bundle, weights = zoo_pull_request
    tool = export_tool()
    from volssl.bundle import zoo

    assert not zoo.weight_files(bundle), "the pull-request layout ships no weights"
    entries = zoo.read_large_files((bundle / "large_files.yml").read_text())
    assert sorted(e["path"] for e in entries) == ["models/model.pt", "models/model.ts"]
    assert all(e["url"].startswith("http://127.0.0.1:") and len(e["hash_val"]) == 64 for e in entries)
    assert any("not fetched" in p for p in tool.check(str(bundle)))  # before the download: the weights are missing
    out = _zoo_verify_in_bundle(bundle, "min")
    assert "large files downloaded" in out and "metadata format" in out
    assert (bundle / "models" / "model.pt").read_bytes() == (weights / "model.pt").read_bytes()
    assert tool.check(str(bundle)) == []


def test_zoo_pull_request_passes_pre_commit_and_has_no_machine_paths(zoo_pull_request, tmp_path):
    """What the pull request adds (the folder without weights, whether or not they were fetched since) passes the
    zoo's pre-commit hooks unchanged, and no exported text names a folder of the exporting machine."""
    from volssl.bundle import zoo

    bundle = zoo.pull_request_layout(zoo_pull_request[0], tmp_path)
    roots = [REPO_ROOT, zoo_pull_request[0].parent.parent, Path.home()]
    assert zoo.machine_paths(bundle, roots) == []
    record = json.loads((bundle / "models" / "training_record.json").read_text())
    assert (bundle / "models" / "training_record.json").read_text() == json.dumps(record, indent=4) + "\n"
    assert zoo.pre_commit_problems(bundle) == []


def test_zoo_code_style_on_the_vendored_package_sample(zoo_pull_request):
    """isort, black and flake8 with the zoo's settings on a sample of the export's code (fast); the whole export is
    checked by the slow test below."""
    from volssl.bundle import zoo

    bundle, _ = zoo_pull_request
    sample = ["volssl/__init__.py", "volssl/bundle/zoo.py", "volssl/io/errors.py", "volssl/data/datalist.py",
              "volssl/losses/crln.py"]
    assert zoo.code_style_problems(bundle, sample) == []


@pytest.mark.slow
def test_zoo_pull_request_full(zoo_pull_request):
    """The whole export in the zoo's style, and the zoo's full verify (verify_net_in_out, TorchScript export and
    the shipped model.ts) after the fetch. About 1-4 min on 2 shared cores."""
    from volssl.bundle import zoo

    bundle, _ = zoo_pull_request
    assert zoo.code_style_problems(bundle) == []
    out = _zoo_verify_in_bundle(bundle, "full")
    assert "data shape" in out and "torchscript" in out


def test_verify_of_a_missing_file_says_file_not_found(tmp_path):
    with pytest.raises(VolsslInputError, match="file not found"):
        export_tool().check(str(tmp_path / "dist" / "nothing_v0.1.0.zip"))


def test_requirements_prints_the_pins_of_metadata(capsys):
    export_tool().requirements(str(BUNDLES / "coral_mri_segmentation"))
    meta = json.loads((BUNDLES / "coral_mri_segmentation" / "configs" / "metadata.json").read_text())
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"pip install monai=={meta['monai_version']} torch=={meta['pytorch_version']} ")
    assert all(f"{k}=={v}" in line.split() for k, v in meta["required_packages_version"].items())


@pytest.mark.slow
@pytest.mark.parametrize("name", SLICE_BUNDLES)
def test_zoo_pull_request_slice_bundles(name, tmp_path):
    """CORAL and SAL (they also ship pretrain.pt) in the pull-request layout: pre-commit, fetch and the zoo's min
    checks. About 1 min each on 2 shared cores."""
    from volssl.bundle import zoo

    with _served_pull_request(name, tmp_path) as (bundle, _):
        assert zoo.pre_commit_problems(bundle) == []
        entries = zoo.read_large_files((bundle / "large_files.yml").read_text())
        assert sorted(e["path"] for e in entries) == ["models/model.pt", "models/model.ts", "models/pretrain.pt"]
        assert "large files downloaded" in _zoo_verify_in_bundle(bundle, "min")
        assert export_tool().check(str(bundle)) == []
