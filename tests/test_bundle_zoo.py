"""Unit tests of ``volssl.bundle.zoo``: large_files.yml, the download, the pre-commit and style checks, machine paths
and the pinned requirements, each on a small folder made here (no export, no training)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from volssl.bundle import zoo


def _bundle(root: Path) -> Path:
    bundle = root / "demo_bundle"
    (bundle / "models").mkdir(parents=True)
    (bundle / "configs").mkdir()
    (bundle / "models" / "model.pt").write_bytes(b"\x80\x02weights\x00\xff")
    (bundle / "models" / "model.ts").write_bytes(b"PK\x03\x04\x00\x00torchscript\xff\xfe")
    (bundle / "models" / "training_record.json").write_text(json.dumps({"values": {"a": 1}}, indent=4) + "\n")
    (bundle / "configs" / "metadata.json").write_text(json.dumps({"version": "0.1.0"}, indent=4) + "\n")
    (bundle / "LICENSE").write_text("Apache-2.0\n")
    return bundle


def test_large_files_yaml_lists_each_weight_with_url_and_sha256(tmp_path):
    bundle = _bundle(tmp_path)
    text = zoo.large_files_yaml(bundle, "http://127.0.0.1:9/weights/")
    entries = zoo.read_large_files(text)
    assert [e["path"] for e in entries] == ["models/model.pt", "models/model.ts"]
    assert entries[0]["url"] == "http://127.0.0.1:9/weights/model.pt"
    assert entries[0]["hash_val"] == zoo.sha256(bundle / "models" / "model.pt")
    assert {e["hash_type"] for e in entries} == {"sha256"}


def test_large_files_yaml_is_what_monai_parses(tmp_path):
    """The zoo's CI reads the file with MONAI's ConfigParser (YAML), not with our reader."""
    pytest.importorskip("yaml")
    from monai.bundle import ConfigParser

    bundle = _bundle(tmp_path)
    (bundle / zoo.LARGE_FILES).write_text(zoo.large_files_yaml(bundle, "http://example.org/w"))
    parser = ConfigParser()
    parser.read_config(str(bundle / zoo.LARGE_FILES))
    assert parser.get()["large_files"] == zoo.read_large_files((bundle / zoo.LARGE_FILES).read_text())


def test_fetch_refuses_an_empty_url(tmp_path):
    bundle = _bundle(tmp_path)
    (bundle / zoo.LARGE_FILES).write_text(zoo.large_files_yaml(bundle, ""))
    with pytest.raises(ValueError, match="has no url"):
        zoo.fetch_large_files(bundle)


def test_fetch_downloads_and_checks_the_hash(tmp_path):
    bundle = _bundle(tmp_path)
    (bundle / zoo.LARGE_FILES).write_text(zoo.large_files_yaml(bundle, (bundle / "models").as_uri()))
    layout = zoo.pull_request_layout(bundle, tmp_path / "pr")
    assert sorted(p.name for p in (layout / "models").iterdir()) == ["training_record.json"]
    fetched = zoo.fetch_large_files(layout)
    assert [p.read_bytes() for p in fetched] == [(bundle / "models" / p.name).read_bytes() for p in fetched]
    (layout / "models" / "model.pt").unlink()
    (bundle / "models" / "model.pt").write_bytes(b"other bytes")  # the hosted file no longer matches the hash
    with pytest.raises(Exception, match="(?i)hash|check"):
        zoo.fetch_large_files(layout)


def test_pre_commit_passes_the_pull_request_layout_and_flags_binaries_and_json_style(tmp_path):
    bundle = _bundle(tmp_path)
    layout = zoo.pull_request_layout(bundle, tmp_path / "pr")
    assert zoo.pre_commit_problems(layout) == []
    problems = zoo.pre_commit_problems(bundle)
    # identify tags model.ts "text" by its name: end-of-file-fixer and mixed-line-ending would rewrite it
    assert any(p.startswith("models/model.ts: binary") for p in problems), problems
    (layout / "configs" / "metadata.json").write_text(json.dumps({"version": "0.1.0"}, indent=2) + "\n")
    before = (layout / "configs" / "metadata.json").read_text()
    problems = zoo.pre_commit_problems(layout)
    assert len(problems) == 1 and problems[0].startswith("pretty-format-json"), problems
    assert (layout / "configs" / "metadata.json").read_text() == before  # checked on a copy


def test_pre_commit_flags_a_large_file_and_a_second_docstring(tmp_path):
    bundle = _bundle(tmp_path)
    layout = zoo.pull_request_layout(bundle, tmp_path / "pr")
    (layout / "models" / "big.bin").write_bytes(b"\0" * (1100 * 1024))
    (layout / "mod.py").write_text('"""Module."""\n\nX = 1\n"""Attribute docstring."""\n')
    problems = " ".join(zoo.pre_commit_problems(layout))
    assert "check-added-large-files" in problems and "check-docstring-first" in problems


def test_code_style_uses_the_zoo_settings(tmp_path):
    bundle = tmp_path / "b"
    bundle.mkdir()
    (bundle / "ok.py").write_text('"""Fine."""\n\nimport os\n\nprint(os.sep, [1, 2])\n')
    assert zoo.code_style_problems(bundle) == []
    # 121 characters: B950 allows 10 % over 120 (132), flake8's E501 is off; black wraps it at 120
    (bundle / "long.py").write_text(f'"""Long."""\n\nX = "{"x" * 140}"\n')
    problems = zoo.code_style_problems(bundle, ["long.py"])
    assert [p.split(":")[0] for p in problems] == ["flake8"] and "B950" in problems[0]
    (bundle / "trailing.py").write_text('"""Trailing comma."""\n\nX = [\n    1,\n    2,\n]\n')
    problems = zoo.code_style_problems(bundle, ["trailing.py"])
    assert [p.split(":")[0] for p in problems] == ["black"]  # --skip-magic-trailing-comma joins the list


def test_portable_record_and_machine_paths(tmp_path):
    repo, run = tmp_path / "repo", tmp_path / "elsewhere" / "run"
    record = {"command": ["python", "--config_file", f'["{repo}/bundles/b/configs/train.json"]', "--bundle_root",
                          str(run), "--datalist", "/data/x/datalist.json"], "values": {"n": 2, "dir": "/workspace/data"}}
    portable = zoo.portable_record(record, [repo, run])
    assert portable["command"] == ["python", "--config_file", '["bundles/b/configs/train.json"]', "--bundle_root",
                                   ".", "--datalist", "datalist.json"]
    assert portable["values"] == {"n": 2, "dir": "/workspace/data"}  # not a path of this machine
    bundle = _bundle(tmp_path)
    (bundle / "configs" / "inference.json").write_text('{"dataset_dir": "/workspace/data"}\n')
    assert zoo.machine_paths(bundle, ["/work"]) == []  # a whole path component only
    (bundle / "models" / "training_record.json").write_text(json.dumps(record))
    assert zoo.machine_paths(bundle, [repo]) == [f"models/training_record.json: {repo.resolve()}"]


def test_bundle_requirements_pin_what_metadata_declares():
    meta = {"monai_version": "1.6.1", "pytorch_version": "2.13.0", "numpy_version": "2.3.5",
            "required_packages_version": {"nibabel": "5.3.2", "fire": "0.7.1"}}
    assert zoo.bundle_requirements(meta) == ["monai==1.6.1", "torch==2.13.0", "numpy==2.3.5", "nibabel==5.3.2",
                                             "fire==0.7.1"]
