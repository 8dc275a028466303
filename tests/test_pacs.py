"""A real PACS: ``tools/pacs.sh`` runs Orthanc with its DICOMweb plugin on 127.0.0.1 (throwaway storage), loads
hippocampus volumes written as DICOM series (STOW-RS), and MONAI Label serves the bundles from it: ``/infer`` on a
series returns its segmentation and stores it in the PACS as DICOM SEG, submitted labels reach the PACS as DICOM SEG
with the bundle's class names, ``/train`` of CRLN reads labelled and unlabelled series from the PACS, and ``/infer``
serves the retrained model.

The first test needs Orthanc only; the second also the MONAI Label environment (``bash tools/monailabel.sh setup``).
Both are marked ``pacs`` and skipped with a reason when what they need is missing:
``apt-get install -y orthanc orthanc-dicomweb && bash tools/monailabel.sh setup &&
.venv/bin/python -m pytest -q -s -m pacs tests/test_pacs.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from dicom_helpers import nifti_to_series
from monailabel_helpers import MONAILABEL_VENV, REPO_ROOT, Server, free_port, phantom_values, standin_export
from volssl.io import VolsslInputError
from volssl.io.dicomweb import search, tag_value

pytestmark = pytest.mark.pacs
LABELS = {"0": "background", "1": "Anterior", "2": "Posterior"}
CRLN = "crln_mri_segmentation"
CORAL = "coral_mri_segmentation"


def _orthanc_problem() -> str | None:
    from volssl.io import orthanc

    try:
        orthanc.find_orthanc()
    except VolsslInputError as err:
        return str(err)
    return None


def _monailabel_problem() -> str | None:
    python = MONAILABEL_VENV / "bin" / "python"
    if not python.is_file():
        return f"no MONAI Label environment at {MONAILABEL_VENV}: run `bash tools/monailabel.sh setup`"
    return None


class Pacs:
    """``bash tools/pacs.sh`` with a state folder and a port of its own."""

    def __init__(self, home: Path) -> None:
        self.env = dict(os.environ, VOLSSL_PACS_HOME=str(home))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/dicom-web"

    def __call__(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(REPO_ROOT / "tools" / "pacs.sh"), *args], env=self.env, capture_output=True,
                              text=True, timeout=300, check=False)

    def metadata(self, study: str, series: str) -> list[dict]:
        with urllib.request.urlopen(f"{self.url}/studies/{study}/series/{series}/metadata", timeout=30) as response:
            return json.loads(response.read())


@pytest.fixture
def pacs(tmp_path):
    problem = _orthanc_problem()
    if problem:
        pytest.skip(problem)
    server = Pacs(tmp_path / "pacs_home")
    started = server("start", "--port", str(server.port))
    assert started.returncode == 0, started.stdout + started.stderr
    assert server.url in started.stdout
    storage = Path(json.loads((tmp_path / "pacs_home" / "state.json").read_text())["storage"])
    try:
        yield server
    finally:
        stopped = server("stop")
        assert stopped.returncode == 0, stopped.stderr
        assert not storage.exists(), "stop deletes the throwaway storage"


def _series(hippocampus_dir: Path, root: Path, n: int) -> list[dict]:
    images = sorted((hippocampus_dir / "imagesTr").glob("*.nii.gz"))[:n]
    out = []
    for i, image in enumerate(images):
        info = nifti_to_series(image, root / f"case{i}", patient_id=f"hippo{i}", description=f"hippocampus {i}")
        out.append({**info, "image": image, "label": hippocampus_dir / "labelsTr" / image.name})
    return out


def test_pacs_start_load_status_stop(pacs, hippocampus_dir, tmp_path):
    cases = _series(hippocampus_dir, tmp_path / "dicom", 2)
    loaded = pacs("load", str(tmp_path / "dicom"))
    assert loaded.returncode == 0, loaded.stderr
    assert f"stored {sum(len(c['files']) for c in cases)} instance(s)" in loaded.stdout
    found = {tag_value(s, "0020000E") for s in search(pacs.url, "series")}
    assert found == {c["series_uid"] for c in cases}
    assert "2 series" in pacs("status").stdout
    missing = pacs("load", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "error:" in missing.stderr.strip().splitlines()[-1]


def _segs(pacs: Pacs) -> dict[str, dict]:
    """The PACS's SEG series: ``{seg series uid: {"description", "references", "segments"}}``."""
    out = {}
    for item in search(pacs.url, "series", {"Modality": "SEG"}):
        study, series = tag_value(item, "0020000D"), tag_value(item, "0020000E")
        meta = pacs.metadata(study, series)[0]
        refs = [tag_value(r, "0020000E") for r in meta.get("00081115", {}).get("Value", [])]
        segments = [tag_value(s, "00620005") for s in meta.get("00620002", {}).get("Value", [])]
        out[series] = {"description": tag_value(item, "0008103E", ""), "references": refs, "segments": segments}
    return out


def test_monailabel_with_the_pacs_infer_label_train_infer(pacs, hippocampus_dir, tmp_path):
    problem = _monailabel_problem()
    if problem:
        pytest.skip(problem)
    cases = _series(hippocampus_dir, tmp_path / "dicom", 5)
    assert pacs("load", str(tmp_path / "dicom")).returncode == 0
    crln_values = {**phantom_values(CRLN), "num_classes": 3, "patch_size": [32, 32, 16]}
    coral_values = {**phantom_values(CORAL), "num_classes": 3}
    exported = [standin_export(CRLN, tmp_path / "exported", crln_values, LABELS),
                standin_export(CORAL, tmp_path / "exported", coral_values, LABELS)]
    server = Server(exported, pacs.url, tmp_path / "app", tmp_path / "server.log")
    timings = {}
    try:
        timings["start"] = server.wait_ready()
        info = server.get("/info/")
        assert set(info["models"]) == {CRLN, CORAL}
        assert info["models"][CRLN]["labels"] == {"anterior": 1, "posterior": 2}  # MONAI Label lower-cases them

        # /infer on a PACS series: the label map on the series' grid, stored back in the PACS as an automatic SEG
        reference = nib.load(cases[0]["image"])
        for model in (CRLN, CORAL):
            body, timings[f"infer {model}"] = server.infer(model, cases[0]["series_uid"])
            pred_path = tmp_path / f"{model}.nii.gz"
            pred_path.write_bytes(body)
            pred = nib.load(pred_path)
            assert pred.shape == reference.shape, (model, pred.shape)
            np.testing.assert_allclose(pred.affine, reference.affine, atol=1e-3)
        automatic = [s for s in _segs(pacs).values() if s["references"] == [cases[0]["series_uid"]]]
        assert len(automatic) == 2 and all(s["description"].endswith("(automatic, not reviewed)") for s in automatic)

        # submitted labels reach the PACS as DICOM SEG with the bundle's class names
        for case in cases[1:3]:
            status, _, _ = server.put_label(case["series_uid"], case["label"])
            assert status == 200
        finals = [s for s in _segs(pacs).values() if s["description"].endswith("(final label)")]
        assert sorted(r for s in finals for r in s["references"]) == sorted(c["series_uid"] for c in cases[1:3])
        assert all(s["segments"] == ["Anterior", "Posterior"] for s in finals), finals

        # /train CRLN from the PACS: 2 labelled series, the 3 others (one with an automatic SEG only) unlabelled
        model_pt = tmp_path / "app" / "model" / CRLN / "models" / "model.pt"
        before = model_pt.read_bytes()
        task, timings["train crln"] = server.train(CRLN, {"max_epochs": 1})
        assert task["status"] == "DONE", server.log_text()[-6000:]
        assert "2 labelled, 2 validation, 3 unlabelled images" in server.log_text()
        assert model_pt.read_bytes() != before, "/train did not update model.pt"

        body, timings["infer crln (retrained)"] = server.infer(CRLN, cases[3]["series_uid"])
        pred_path = tmp_path / "retrained.nii.gz"
        pred_path.write_bytes(body)
        assert nib.load(pred_path).shape == nib.load(cases[3]["image"]).shape
        assert "Reload model from cache" in server.log_text(), "the server serves the retrained model"
    finally:
        server.stop()
        print("\n" + "\n".join(f"  {k}: {v:.1f} s" for k, v in timings.items()))
        kept = os.environ.get("VOLSSL_PACS_TEST_LOG")
        if kept:
            Path(kept).write_text(server.log_text())
