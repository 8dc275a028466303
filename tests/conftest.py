"""Shared fixtures: where the real data sets live (skips with a reason when they are absent), one-thread torch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def _shared(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real data set '{name}' not found at {path} (the ../shared/data folder next to the project root)")
    return path


@pytest.fixture(scope="session")
def hippocampus_dir() -> Path:
    """MSD Task04 hippocampus folder (dataset.json, imagesTr, labelsTr)."""
    return _shared("hippocampus")


@pytest.fixture(scope="session")
def acdc_dir() -> Path:
    """SSL4MIS ACDC folder (volumes/*.h5, train/val/test.list)."""
    return _shared("acdc")


@pytest.fixture(scope="session")
def la_dir() -> Path:
    """UA-MT left-atrium folder, 2x downsampled (2018LA_Seg_Training Set/<id>/mri_norm2.h5, train/test.list)."""
    return _shared("la_half")


@pytest.fixture
def one_thread():
    """One intra-op thread for tests on tiny tensors: faster there, and no stalls when other processes share the
    cores. Use it with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session", autouse=True)
def signing_key(tmp_path_factory):
    """Exports in the tests sign with a throw-away key (``$VOLSSL_SIGNING_KEY``, inherited by subprocesses), never
    with the user's ``~/.config/volssl/signing_key``."""
    import os

    from volssl.bundle.signing import KEY_ENV

    path = tmp_path_factory.mktemp("signing") / "signing_key"
    previous = os.environ.get(KEY_ENV)
    os.environ[KEY_ENV] = str(path)
    yield path
    if previous is None:
        os.environ.pop(KEY_ENV, None)
    else:
        os.environ[KEY_ENV] = previous
