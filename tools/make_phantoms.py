"""Write the synthetic phantom data set (the default data of the volssl bundles).

Usage::

    python tools/make_phantoms.py --output_dir data/phantom --n 20 --seed 0 [--anisotropic] [--preview]

Writes ``imagesTr/``, ``labelsTr/`` and an MSD ``dataset.json`` (also a volssl datalist) under ``output_dir``; with
``--preview``, also ``preview.png``: a few slices of the first case with its label overlaid.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

try:
    import cli
except ImportError:  # imported from elsewhere rather than run as `python tools/<tool>.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import cli

try:
    import volssl  # noqa: F401
except ImportError:  # run from a checkout where the package is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "common"))

from volssl.data.phantom import save_phantom_preview, write_phantom_dataset  # noqa: E402
from volssl.io import load_nifti, spacing_from_affine  # noqa: E402


def main(
    output_dir: str = "data/phantom",
    n: int = 20,
    seed: int = 0,
    anisotropic: bool = False,
    shape: tuple[int, int, int] = (64, 64, 24),
    spacing: tuple[float, float, float] | None = None,
    overwrite: bool = False,
    preview: bool = False,
) -> None:
    """Write ``n`` phantoms to ``output_dir`` and print where and how long it took.

    Args:
        output_dir: the folder to write (``imagesTr/``, ``labelsTr/``, ``dataset.json``).
        n: the number of cases.
        seed: the data set's seed (case ``k`` depends only on ``seed`` and ``k``).
        anisotropic: thick slices, 1 x 1 x 3 mm (instead of 1 mm isotropic).
        shape: the grid size ``x y z``, e.g. ``--shape "[64,64,24]"``; ``z`` is the slice axis.
        spacing: voxel size in mm ``x y z``, e.g. ``--spacing "[0.8,0.8,2.5]"`` (not with ``--anisotropic``).
        overwrite: rewrite existing files, and replace a folder made with other parameters.
        preview: also write ``preview.png`` (slices of the first case with its label).
    """
    start = time.perf_counter()
    json_path = write_phantom_dataset(
        output_dir, n=n, seed=seed, shape=shape, spacing=spacing, anisotropic=anisotropic, overwrite=overwrite
    )
    elapsed = time.perf_counter() - start
    out = json_path.parent
    print(f"wrote {n} phantoms to {out.resolve()} (datalist {json_path.name}) in {elapsed:.2f} s")
    if preview:
        image, affine = load_nifti(out / "imagesTr" / "phantom_000.nii.gz")
        label, _ = load_nifti(out / "labelsTr" / "phantom_000.nii.gz")
        png = save_phantom_preview(
            image, label, out / "preview.png", spacing=spacing_from_affine(affine), title=f"phantom_000 (seed {seed})"
        )
        print(f"preview: {png.resolve()}")


if __name__ == "__main__":
    cli.main(main)
