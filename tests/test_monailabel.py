"""MONAI Label: the app layout, what MONAI Label 0.8.5 reads from each bundle, and (when its environment exists) a real
server: /info, /infer for each bundle, save labels, /train CRLN semi-supervised, /infer with the retrained model.

The first part needs no MONAI Label (the default suite). The server test needs ``bash tools/monailabel.sh setup``
(``.venv-monailabel``, or VOLSSL_MONAILABEL_VENV) and is skipped with a reason otherwise; it is marked ``monailabel``:
``python -m pytest -q -m monailabel tests/test_monailabel.py`` runs it alone. It serves stand-in exports of the three
bundles, or the zips listed in ``VOLSSL_MONAILABEL_ZIPS`` (comma-separated, CRLN's among them; e.g. the main job's).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser
from monai.transforms import Compose, LoadImaged
from monailabel_helpers import (
    BUNDLES,
    MONAILABEL_VENV,
    REPO_ROOT,
    Server,
    make_studies,
    phantom_values,
    standin_export,
)

APP_SOURCE = REPO_ROOT / "tools" / "monailabel_app"
NAMES = ("coral_mri_segmentation", "sal_mri_segmentation", "crln_mri_segmentation")
LABELS = {"0": "background", "1": "shell", "2": "core", "3": "tail"}


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


serve = _load("volssl_monailabel_serve", REPO_ROOT / "tools" / "monailabel_serve.py")
app_lib = _load("volssl_monailabel_app_lib", APP_SOURCE / "lib" / "volssl_bundles.py")
fallback = _load("volssl_monailabel_torchvision_fallback", APP_SOURCE / "lib" / "torchvision_fallback.py")


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Path]:
    """Stand-in exports of the three bundles (initial weights, phantom-sized values): ``{name: zip}``."""
    out = tmp_path_factory.mktemp("exported")
    return {n: standin_export(n, out, phantom_values(n), LABELS) for n in NAMES}


# ---------------------------------------------------------------------------------------------------------- layout


def test_layout_from_zip_and_folder_then_keep_or_replace(tmp_path, exported):
    app = tmp_path / "app"
    folder = exported["crln_mri_segmentation"].parent / "crln_mri_segmentation"
    names = serve.layout_app(app, [exported["coral_mri_segmentation"], folder], log=lambda _: None)
    assert names == ["coral_mri_segmentation", "crln_mri_segmentation"]
    assert (app / "main.py").read_text() == (APP_SOURCE / "main.py").read_text()
    assert (app / "lib" / "tasks.py").is_file() and (app / "lib" / "volssl_bundles.py").is_file()
    for name in names:
        bundle = app / "model" / name
        assert (bundle / "volssl" / "__init__.py").is_file(), "the vendored package travels with the bundle"
        assert (bundle / "models" / "model.pt").is_file() and (bundle / "configs" / "inference.json").is_file()
    assert (app / "model" / "coral_mri_segmentation" / "models" / "pretrain.pt").is_file()
    assert sorted(app_lib.find_bundles(app / "model")) == sorted(names)
    assert list(app_lib.find_bundles(app / "model", "crln_mri_segmentation,coral_mri_segmentation")) == names[::-1]

    # a retrained model in the served copy survives the next serve; --replace starts from the export again
    served_model = app / "model" / "coral_mri_segmentation" / "models" / "model.pt"
    served_model.write_bytes(b"retrained")
    messages = []
    serve.layout_app(app, [exported["coral_mri_segmentation"]], log=messages.append)
    assert served_model.read_bytes() == b"retrained" and "kept" in messages[0]
    serve.layout_app(app, [exported["coral_mri_segmentation"]], replace=True, log=messages.append)
    assert served_model.read_bytes() != b"retrained" and "copied" in messages[-1]
    assert not list((app / "model").glob(".incoming_*")), "no staging folder is left behind"


def test_layout_refuses_what_monailabel_cannot_serve(tmp_path, exported):
    with pytest.raises(serve.BundleError, match="volssl/ is not vendored"):
        serve.layout_app(tmp_path / "app", [BUNDLES / "crln_mri_segmentation"], log=lambda _: None)
    two_tops = tmp_path / "two.zip"
    with zipfile.ZipFile(two_tops, "w") as zf:
        zf.writestr("a/configs/metadata.json", "{}")
        zf.writestr("b/configs/metadata.json", "{}")
    with pytest.raises(serve.BundleError, match="one top folder"):
        serve.layout_app(tmp_path / "app", [two_tops], log=lambda _: None)
    with pytest.raises(serve.BundleError, match="missing.zip: file not found"):
        serve.layout_app(tmp_path / "app", [tmp_path / "missing.zip"], log=lambda _: None)
    (tmp_path / "notes.txt").write_text("not a bundle")
    with pytest.raises(serve.BundleError, match="neither a bundle folder nor a zip"):
        serve.layout_app(tmp_path / "app", [tmp_path / "notes.txt"], log=lambda _: None)
    with pytest.raises(FileNotFoundError, match="no bundle"):
        app_lib.find_bundles(tmp_path / "app" / "model", "not_there")


def test_server_command_listens_on_loopback_only(tmp_path, exported):
    app = tmp_path / "app"
    studies = tmp_path / "studies"
    studies.mkdir()
    cmd = serve.server_command("/venv/bin/python", app, studies, ["a", "b"], 8123)
    assert cmd[:4] == ["/venv/bin/python", "-m", "monailabel.main", "start_server"]
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[cmd.index("--port") + 1] == "8123"
    assert cmd[cmd.index("--conf") + 1 : cmd.index("--conf") + 3] == ["models", "a,b"]


def test_server_command_and_settings_for_a_dicomweb_url(tmp_path):
    url = "http://127.0.0.1:8042/dicom-web"
    assert serve.is_url(url) and not serve.is_url(tmp_path)
    cmd = serve.server_command("/venv/bin/python", tmp_path / "app", url, ["a"], 8123)
    assert cmd[cmd.index("--studies") + 1] == url, "a URL is passed on as it is, not made a path"
    env = serve.dicomweb_environment(tmp_path / "app", "MR", environ={})
    assert json.loads(env["MONAI_LABEL_DICOMWEB_SEARCH_FILTER"]) == {"Modality": "MR"}
    assert env["MONAI_LABEL_DICOMWEB_CACHE_PATH"] == str((tmp_path / "app").resolve() / "dicomweb_cache")
    assert env["MONAI_LABEL_DICOMWEB_CACHE_EXPIRY"] == "0"
    kept = serve.dicomweb_environment(tmp_path / "app", "MR", environ={"MONAI_LABEL_DICOMWEB_SEARCH_FILTER": "{}"})
    assert "MONAI_LABEL_DICOMWEB_SEARCH_FILTER" not in kept, "the user's own setting wins"


# ----------------------------------------------------------------------------- what MONAI Label reads from bundles


def _parser(config: Path, bundle_root: Path, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(config)
    parser["bundle_root"] = str(bundle_root)
    for key, value in overrides.items():
        parser[key] = value
    return parser


@pytest.mark.parametrize("name", NAMES)
def test_metadata_gives_real_label_names_and_dimension(name, exported):
    metadata = app_lib.read_metadata(exported[name].parent / name)
    assert app_lib.label_names(metadata) == {0: "background", 1: "shell", 2: "core", 3: "tail"}
    # CORAL/SAL are 2D networks applied slice by slice; MONAI Label takes the dimension from spatial_shape
    assert app_lib.dimension(metadata) == (3 if name.startswith("crln") else 2)
    assert next(iter(metadata["network_data_format"]["outputs"])) == "pred"


@pytest.mark.parametrize("name", NAMES)
def test_inference_ids_resolve_without_any_dataset(name, exported, tmp_path, monkeypatch):
    """BundleInferTask reads network_def, preprocessing, inferer, postprocessing, device and bundle_root only: they
    resolve in an empty working directory (no datalist) and model.pt loads into network_def."""
    bundle = exported[name].parent / name
    monkeypatch.chdir(tmp_path)
    parser = _parser(bundle / "configs" / "inference.json", bundle, device="cpu")
    network = parser.get_parsed_content("network_def")
    state = torch.load(bundle / "models" / "model.pt", map_location="cpu", weights_only=True)
    network.load_state_dict(state, strict=True)
    pre = parser.get_parsed_content("preprocessing")
    assert isinstance(pre, Compose) and any(isinstance(t, LoadImaged) for t in pre.transforms), (
        "MONAI Label swaps the LoadImaged of a Compose for its own loader"
    )
    assert parser.get_parsed_content("inferer") is not None
    assert isinstance(parser.get_parsed_content("postprocessing"), Compose)


@pytest.fixture(scope="module")
def studies_with_labels(tmp_path_factory) -> tuple[Path, Path]:
    return make_studies(tmp_path_factory.mktemp("ml") / "studies", n=2)


@pytest.mark.parametrize("name", NAMES)
def test_train_with_monailabel_overrides_reads_no_datalist(name, exported, studies_with_labels, tmp_path, monkeypatch):
    """What BundleTrainTask overrides (+ our app's unlabelled pool for CRLN) leaves nothing that reads the
    datalist: every dataset resolves from the injected lists in an empty working directory."""
    bundle = exported[name].parent / name
    studies, labels = studies_with_labels
    monkeypatch.chdir(tmp_path)
    pairs = [{"image": str(studies / "phantom_000.nii.gz"), "label": str(labels / "phantom_000.nii.gz")}]
    overrides = {"device": "cpu", "train#trainer#max_epochs": 1, "train#dataset#data": pairs,
                 "validate#dataset#data": pairs}
    config = json.loads((bundle / "configs" / "train.json").read_text())
    semi = app_lib.config_id_exists(config, "unlabeled#data")
    assert semi == name.startswith("crln")
    if semi:
        overrides["unlabeled#data"] = [{"image": str(studies / "phantom_001.nii.gz")}]
    parser = _parser(bundle / "configs" / "train.json", bundle, **overrides)
    # the training streams read the injected lists through whichever data path the config selects
    for stream, injected in (("train", pairs),) + ((("unlabeled", overrides["unlabeled#data"]),) if semi else ()):
        loader = parser.get_parsed_content(f"{stream}#dataloader")
        volumes = loader.cache.cases if hasattr(loader, "cache") else loader.dataset
        assert len(volumes) == len(injected), stream
    assert len(parser.get_parsed_content("validate#dataset")) == len(pairs)
    # the ids MONAI Label sets or inserts into
    assert isinstance(config["train"]["handlers"], list) and "network" in config and "run" in config
    assert {"resume", "train_ckpt_dir"} <= set(config)
    if "load_pretrain" in config:
        assert (bundle / "models" / "pretrain.pt").is_file()
        assert str(parser.get_parsed_content("pretrained_ckpt")) == f"{bundle}/models/pretrain.pt"


# ----------------------------------------------------------------------------------------- the app's decisions


def test_use_bundle_package_unloads_only_a_different_copy(tmp_path, monkeypatch):
    package = "volssl_probe_pkg"
    monkeypatch.setattr(app_lib, "PACKAGE", package)
    first, same, other = (tmp_path / n for n in ("first", "same", "other"))
    for root, text in ((first, "X = 1\n"), (same, "X = 1\n"), (other, "X = 2\n")):
        (root / package).mkdir(parents=True)
        (root / package / "__init__.py").write_text(text)
    monkeypatch.syspath_prepend(str(first))
    module = __import__(package)
    try:
        assert not app_lib.use_bundle_package(same, package), "an identical copy is kept"
        assert sys.modules[package] is module
        assert app_lib.use_bundle_package(other, package), "a different copy is unloaded"
        assert package not in sys.modules
        monkeypatch.syspath_prepend(str(other))
        assert __import__(package).X == 2
    finally:
        sys.modules.pop(package, None)


def test_unlabelled_pool_and_validation_fallback():
    labelled = [{"image": "a", "label": "la"}, {"image": "b", "label": "lb"}]
    pool, source = app_lib.semi_supervised_pool(labelled, ["c", "d"])
    assert pool == [{"image": "c"}, {"image": "d"}] and "without a final label" in source
    pool, source = app_lib.semi_supervised_pool(labelled, [])
    assert pool == [{"image": "a"}, {"image": "b"}] and "labelled images" in source
    train, val, note = app_lib.validation_split(labelled, [])
    assert val == labelled and train == labelled and note
    assert app_lib.validation_split(labelled[:1], labelled[1:]) == (labelled[:1], labelled[1:], "")
    assert app_lib.validation_split(labelled, None) == (labelled, None, ""), "val_split -1: the bundle's own"


def test_torchvision_stand_in_only_when_torchvision_is_unusable(monkeypatch):
    saved = {k: v for k, v in sys.modules.items() if k == "torchvision" or k.startswith("torchvision.")}
    try:
        monkeypatch.setitem(sys.modules, "torchvision", None)  # import fails, as with no (or a broken) torchvision
        assert fallback.provide_torchvision_utils_if_missing()
        from torchvision.utils import make_grid

        with pytest.raises(ImportError, match="not available in this MONAI Label environment"):
            make_grid(torch.zeros(1, 1, 2, 2))
        assert not fallback.provide_torchvision_utils_if_missing(), "a usable torchvision (here the stand-in) stays"
    finally:
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        sys.modules.update(saved)


def test_setup_script_pins_and_comments():
    """Every pin of the MONAI Label environment says why; the known breakages stay pinned."""
    lines = (REPO_ROOT / "tools" / "monailabel_requirements.txt").read_text().splitlines()
    for i, line in enumerate(lines):
        if "<" in line and not line.startswith("#"):
            assert lines[i - 1].startswith("#"), f"pin without a comment: {line}"
    text = "\n".join(lines)
    assert "pydicom>=2.4.4,<3" in text and "dicomweb-client[gcp]>=0.59.1,<0.61" in text
    assert "\ntorchvision" not in text and "\nsam2" not in text
    script = (REPO_ROOT / "tools" / "monailabel.sh").read_text()
    assert '"torch>=2.8,<2.14"' in script and '--no-deps "monailabel==0.8.5"' in script
    assert ".venv-monailabel" in script and "VOLSSL_MONAILABEL_VENV" in script


# -------------------------------------------------------------------------------------------------- real server


def _monailabel_env_problem() -> str | None:
    python = MONAILABEL_VENV / "bin" / "python"
    if not python.is_file():
        return f"no MONAI Label environment at {MONAILABEL_VENV}: run `bash tools/monailabel.sh setup`"
    probe = subprocess.run([str(python), "-c", "import monailabel"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        return f"{python} cannot import monailabel: {probe.stderr.strip()[-300:]}"
    return None


@pytest.mark.monailabel
def test_real_server_info_infer_label_train_infer(tmp_path):
    problem = _monailabel_env_problem()
    if problem:
        pytest.skip(problem)
    import nibabel as nib
    import numpy as np

    given = [Path(z) for z in os.environ.get("VOLSSL_MONAILABEL_ZIPS", "").split(",") if z]
    if given:  # real exports, e.g. the main job's phantom-trained zips: `VOLSSL_MONAILABEL_ZIPS=a.zip,b.zip`
        exported = {re.sub(r"_v\d.*$", "", z.stem): z.resolve() for z in given}
        assert "crln_mri_segmentation" in exported, "the check retrains CRLN: give its zip"
    else:
        # CRLN's vendored volssl differs from the others' (as if exported from another commit): it must get its own
        exported = {n: standin_export(n, tmp_path / "exported", phantom_values(n), LABELS,
                                      package_note="exported from another commit" if n.startswith("crln") else None)
                    for n in NAMES}
    names = sorted(exported)
    studies, true_labels = make_studies(tmp_path / "studies", n=5)
    server = Server(list(exported.values()), studies, tmp_path / "app", tmp_path / "server.log")
    timings = {}
    try:
        timings["start"] = server.wait_ready()
        info = server.get("/info/")
        assert set(info["models"]) == set(names) and set(info["trainers"]) == set(names)
        for name in names:
            model = info["models"][name]
            assert model["labels"] == {"shell": 1, "core": 2, "tail": 3}, model
            assert model["dimension"] == (3 if name.startswith("crln") else 2)

        if not given:
            assert "crln_mri_segmentation: its volssl differs from the loaded copy" in server.log_text()
        reference = nib.load(studies / "phantom_000.nii.gz")
        for name in names:
            body, timings[f"infer {name}"] = server.infer(name, "phantom_000")
            pred_path = tmp_path / f"{name}.nii.gz"
            pred_path.write_bytes(body)
            pred = nib.load(pred_path)
            assert pred.shape == reference.shape and np.allclose(pred.affine, reference.affine)
            assert set(np.unique(np.asarray(pred.dataobj)).astype(int)) <= {0, 1, 2, 3}

        for image_id in ("phantom_000", "phantom_001"):
            status, _, _ = server.put_label(image_id, true_labels / f"{image_id}.nii.gz")
            assert status == 200
        crln = "crln_mri_segmentation"
        model_pt = tmp_path / "app" / "model" / crln / "models" / "model.pt"
        before = model_pt.read_bytes()
        for attempt in ("first", "repeated"):
            task, timings[f"train {crln} ({attempt})"] = server.train(crln, {"max_epochs": 1})
            assert task["status"] == "DONE", server.log_text()[-6000:]
            log = server.log_text()
            assert "2 labelled, 2 validation, 3 unlabelled images" in log
            assert model_pt.read_bytes() != before, f"{attempt} /train did not update model.pt"
            before = model_pt.read_bytes()
        assert "is from a finished run" in log, "the repeated request starts a new run"
        body, timings[f"infer {crln} (retrained)"] = server.infer(crln, "phantom_002")
        assert "Reload model from cache" in server.log_text(), "the server serves the retrained model"
        pred_path = tmp_path / "retrained.nii.gz"
        pred_path.write_bytes(body)
        assert nib.load(pred_path).shape == nib.load(studies / "phantom_002.nii.gz").shape
    finally:
        server.stop()
        print("\n" + "\n".join(f"  {k}: {v:.1f} s" for k, v in timings.items()))
        shutil.copy2(server.log_path, os.environ.get("VOLSSL_MONAILABEL_TEST_LOG", tmp_path / "kept.log"))
