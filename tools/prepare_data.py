"""Prepare the papers' data sets as volssl datalists, and check a datalist's files.

Subcommands (a ``fire`` CLI; ``--help`` after a subcommand lists its arguments):

- ``msd``: an MSD-style folder (``dataset.json`` + ``imagesTr``/``labelsTr``) -> a datalist that points at the
  original files (nothing is copied), split into labelled / unlabelled / validation / test.
- ``split``: the same as ``msd``, for any MSD-style folder.
- ``acdc``: SSL4MIS ACDC h5 volumes -> NIfTI + ``datalist.json`` (the published val/test lists are kept; the training
  list is split into labelled and unlabelled patients). The h5 files store no spacing: give it with ``--spacing``.
- ``la``: UA-MT left-atrium h5 volumes -> NIfTI + ``datalist.json`` (test.list kept; validation, labelled and
  unlabelled cases taken from train.list).
- ``dicom``: a folder of DICOM studies -> NIfTI copies + ``datalist.json``: every image series a case (checked as
  bundle inference checks its DICOM inputs), the DICOM SEG that references a series its label; labelled cases split
  into labelled / validation / test, series without a SEG unlabelled.
- ``check``: validate a datalist and load every case, reporting all problems at once.

Examples (from the project root; the data stay in ../shared/data, the outputs go wherever you say)::

    python tools/prepare_data.py msd ../shared/data/hippocampus /tmp/hippo/datalist.json \\
        --n_labeled 10 --n_val 20 --n_test 40 --seed 0
    python tools/prepare_data.py split /data/Task04_Hippocampus /tmp/hippo/datalist_l5.json 5 20 40
    python tools/prepare_data.py acdc ../shared/data/acdc /tmp/acdc_nifti --spacing 1.5625,1.5625,10 \\
        --n_labeled_patients 7 --seed 0
    python tools/prepare_data.py la ../shared/data/la_half /tmp/la_nifti --n_labeled 8 --n_val 8 --seed 0
    python tools/prepare_data.py dicom /data/studies /tmp/studies_nifti --n_val 2 --n_test 2 --seed 0
    python tools/prepare_data.py check /tmp/la_nifti/datalist.json

Each command prints where it wrote the datalist and the number of cases of each role. ``msd`` and ``check`` print a
``warning: <file>: <problem>`` line for each NIfTI file next to the listed cases that no role lists and for each
label without an image; ``dicom`` one for each series, object or SEG it leaves out (a series that fails its checks,
an SR, a SEG of no converted series). Bad input (including NaN/Inf voxels in an image) ends with one line
``error: <file>: <problem>`` and exit status 2 (the convention of every tool, see tools/cli.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    import cli
except ImportError:  # imported from elsewhere rather than run as `python tools/<tool>.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import cli
from volssl.data.converters import (
    acdc_h5_to_nifti,
    check_datalist,
    datalist_unlisted,
    la_h5_to_nifti,
    msd_to_datalist,
    msd_unlisted,
    role_counts,
)
from volssl.data.dicom_studies import dicom_to_datalist


def _report(what: str, path, counts: dict[str, int]) -> None:
    roles = ", ".join(f"{role} {n}" for role, n in counts.items())
    print(f"{what} {Path(path).resolve()}: {roles}")


def msd(
    msd_dir: str,
    output: str,
    n_labeled: int,
    n_val: int,
    n_test: int,
    seed: int = 0,
    n_unlabeled: int | None = None,
    group_regex: str | None = None,
    include_msd_test: bool = False,
) -> None:
    """Write a datalist for an MSD-style folder (no image is copied).

    Args:
        msd_dir: the folder holding ``dataset.json``.
        output: the datalist JSON file to write.
        n_labeled: labelled training cases.
        n_val: validation cases.
        n_test: test cases.
        seed: split seed.
        n_unlabeled: unlabelled cases (default: all the rest).
        group_regex: keep cases whose names share this pattern's match in one role (e.g. ``patient\\d+``).
        include_msd_test: add the MSD test images (unlabelled) to the unlabelled role.
    """
    datalist = msd_to_datalist(
        msd_dir, output, n_labeled, n_val, n_test, seed, n_unlabeled, group_regex, include_msd_test
    )
    for path, problem in msd_unlisted(msd_dir):
        cli.warn(path, problem)
    _report("wrote", output, role_counts(datalist))


def acdc(
    acdc_dir: str,
    output_dir: str,
    spacing,
    n_labeled_patients: int = 7,
    seed: int = 0,
    limit: int | None = None,
    overwrite: bool = False,
) -> None:
    """Convert SSL4MIS ACDC h5 volumes to NIfTI and write ``<output_dir>/datalist.json``.

    Args:
        acdc_dir: the folder with ``volumes/`` and ``train.list``/``val.list``/``test.list``.
        output_dir: where ``imagesTr/``, ``labelsTr/`` and ``datalist.json`` go.
        spacing: voxel size x,y,z in mm (required: the h5 files store none), e.g. ``1.5625,1.5625,10``.
        n_labeled_patients: labelled patients from train.list (both frames each).
        seed: split seed.
        limit: convert only the first ``limit`` patients of each role.
        overwrite: rewrite files that already exist.
    """
    datalist = acdc_h5_to_nifti(acdc_dir, output_dir, spacing, n_labeled_patients, seed, limit, overwrite)
    _report("wrote", Path(output_dir) / "datalist.json", role_counts(datalist))


def la(
    la_dir: str,
    output_dir: str,
    n_labeled: int = 8,
    n_val: int = 8,
    seed: int = 0,
    spacing=None,
    limit: int | None = None,
    overwrite: bool = False,
) -> None:
    """Convert UA-MT left-atrium h5 volumes to NIfTI and write ``<output_dir>/datalist.json``.

    Args:
        la_dir: the folder with ``2018LA_Seg_Training Set/``, ``train.list`` and ``test.list``.
        output_dir: where ``imagesTr/``, ``labelsTr/`` and ``datalist.json`` go.
        n_labeled: labelled cases from train.list.
        n_val: validation cases from train.list.
        seed: split seed.
        spacing: x,y,z in mm for files without a ``spacing_mm`` attribute (full-resolution UA-MT: 0.625,0.625,0.625).
        limit: convert only the first ``limit`` cases of each role.
        overwrite: rewrite files that already exist.
    """
    datalist = la_h5_to_nifti(la_dir, output_dir, n_labeled, n_val, seed, spacing, limit, overwrite)
    _report("wrote", Path(output_dir) / "datalist.json", role_counts(datalist))


def dicom(studies_dir: str, output_dir: str, n_labeled: int | None = None, n_val: int = 0, n_test: int = 0,
          seed: int = 0) -> None:
    """Convert DICOM series (and their SEG labels) to NIfTI and write ``<output_dir>/datalist.json``.

    Args:
        studies_dir: the folder of DICOM studies (any layout; every image series is a case).
        output_dir: where ``imagesTr/``, ``labelsTr/`` and ``datalist.json`` go.
        n_labeled: labelled training cases (default: every labelled case not in validation or test).
        n_val: validation cases (labelled).
        n_test: test cases (labelled).
        seed: split seed.
    """
    datalist, warnings = dicom_to_datalist(studies_dir, output_dir, n_labeled, n_val, n_test, seed)
    for path, problem in warnings:
        cli.warn(path, problem)
    _report("wrote", Path(output_dir) / "datalist.json", role_counts(datalist))


def check(datalist: str, dataset_dir: str | None = None) -> None:
    """Validate a datalist and load every case (all problems are reported together).

    Args:
        datalist: the datalist JSON file.
        dataset_dir: the folder the paths are relative to (default: from the datalist).
    """
    counts = check_datalist(datalist, dataset_dir)
    for path, problem in datalist_unlisted(datalist, dataset_dir):
        cli.warn(path, problem)
    _report("ok", datalist, counts)


COMMANDS = {"msd": msd, "split": msd, "acdc": acdc, "la": la, "dicom": dicom, "check": check}


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status (see tools/cli.py: 2 on bad input)."""
    return cli.run(COMMANDS, name="prepare_data.py", argv=argv)


if __name__ == "__main__":
    sys.exit(main())
