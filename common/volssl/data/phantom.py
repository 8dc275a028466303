"""Synthetic labelled 3D phantoms: the default data that runs with no download.

Each phantom is a small MRI-like crop, in nibabel's ``(x, y, z)`` voxel order with the slice axis last, holding
three labelled structures whose cross-sections change smoothly and monotonically from the first slice to the last,
so that the normalised slice position ``p = (i + 1) / S`` carries anatomy, as it does in real scans:

- ``1`` ``shell``: a ring (a wall) whose radius grows with ``z``;
- ``2`` ``core``: an ellipse inside the ring that shrinks with ``z`` and drifts off-centre; between the core and
  the wall lies bright unlabelled fluid;
- ``3`` ``tail``: a bean-shaped structure next to the ring that appears part-way up the volume, grows, and sweeps
  outwards and around the ring as ``z`` increases.

The unlabelled background holds textured soft tissue, a bright fat rim and air where the body outline crosses one
corner, and a dark vessel (a flow void) running through all the slices.

Subjects differ: overall size, radii, wall thickness, aspect ratio, orientation and twist, centre shift, the
slice where the tail appears, the mapping of slices onto anatomy (shift, stretch, tilt), a smooth random deformation
field, per-tissue intensities, overall gain, a multiplicative bias field and the Rician noise level. The image is
smoothed (partial volume) before the noise is added; the label is not.

Everything is drawn from one random generator seeded by ``seed``: the subject's parameters first (independently of
the grid), then the noise. The anatomy is defined in coordinates normalised to the field of view, so the same seed
on another ``shape`` or ``spacing`` gives the same subject resampled. ``write_phantom_dataset`` seeds case ``k``
with ``(seed, k)``, so its content depends only on ``(seed, k)`` and a smaller ``n`` is a prefix of a larger one.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..io import VolsslInputError, save_nifti
from .datalist import save_datalist

__all__ = [
    "PHANTOM_LABELS",
    "DEFAULT_SHAPE",
    "DEFAULT_SPACING",
    "ANISOTROPIC_SPACING",
    "GENERATOR_VERSION",
    "phantom_affine",
    "make_phantom",
    "case_seed",
    "write_phantom_dataset",
    "save_phantom_preview",
]

logger = logging.getLogger(__name__)

PHANTOM_LABELS: dict[str, str] = {"0": "background", "1": "shell", "2": "core", "3": "tail"}
DEFAULT_SHAPE: tuple[int, int, int] = (64, 64, 24)
DEFAULT_SPACING: tuple[float, float, float] = (1.0, 1.0, 1.0)
ANISOTROPIC_SPACING: tuple[float, float, float] = (1.0, 1.0, 3.0)
#: Bump when a change to the generator changes the volumes made from a given seed (it is stored in dataset.json,
#: so that an old folder is never silently extended with cases of a different kind).
GENERATOR_VERSION = 1
PARAMS_KEY = "phantom_parameters"
_CASE_RE = re.compile(r"^phantom_(\d+)\.nii\.gz$")

# tissue intensities (before gain and bias), subject jitter is added to each
_TISSUE_MEAN = {
    "air": 0.0,
    "body": 0.42,
    "fat": 0.90,
    "fluid": 0.97,
    "vessel": 0.07,
    "shell": 0.64,
    "core": 0.18,
    "tail": 0.80,
}
_TISSUE_JITTER = 0.035


# ---------------------------------------------------------------------------------------------- parameters


def _check_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or any(s < 4 for s in shape):
        raise ValueError(f"shape must be three sizes of at least 4 voxels, got {shape}")
    return shape  # type: ignore[return-value]


def _check_spacing(spacing: Sequence[float]) -> tuple[float, float, float]:
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing must be three positive numbers (mm), got {spacing}")
    return spacing  # type: ignore[return-value]


def _resolve_spacing(spacing: Sequence[float] | None, anisotropic: bool) -> tuple[float, float, float]:
    if spacing is not None and anisotropic:
        raise ValueError("give either spacing or anisotropic=True, not both")
    if spacing is None:
        spacing = ANISOTROPIC_SPACING if anisotropic else DEFAULT_SPACING
    return _check_spacing(spacing)


def _modes(rng: np.random.Generator, n: int, fmin: float, fmax: float, rms: float) -> tuple[np.ndarray, ...]:
    """``n`` random plane waves with frequencies in ``[fmin, fmax]`` cycles per normalised unit, summing to a field
    of about ``rms`` root-mean-square amplitude."""
    direction = rng.standard_normal((n, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True) + 1e-12
    freqs = direction * rng.uniform(fmin, fmax, (n, 1))
    phases = rng.uniform(0.0, 2 * np.pi, n)
    amps = rng.standard_normal(n) * rms * np.sqrt(2.0 / n)
    return freqs, phases, amps


def _eval_modes(modes: tuple[np.ndarray, ...], u: np.ndarray, v: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Evaluate a sum of plane waves on the grid whose axes are ``u`` (x), ``v`` (y) and ``w`` (z).

    Each wave is separable in complex form, ``cos(a + b + c + ph) = Re(e^ia e^ib e^ic e^iph)``, so the sum over waves
    is a small contraction instead of a cosine per wave and voxel (``einsum``, not BLAS: a threaded BLAS is slower
    than the work on so small a product).
    """
    freqs, phases, amps = modes
    ex = np.exp(2j * np.pi * np.outer(np.ravel(u), freqs[:, 0])) * (amps * np.exp(1j * phases))  # (X, M)
    ey = np.exp(2j * np.pi * np.outer(np.ravel(v), freqs[:, 1]))  # (Y, M)
    ez = np.exp(2j * np.pi * np.outer(np.ravel(w), freqs[:, 2]))  # (Z, M)
    xy = (ex[:, None, :] * ey[None, :, :]).reshape(-1, len(amps))
    return np.einsum("pm,zm->pz", xy, ez).real.reshape(ex.shape[0], ey.shape[0], ez.shape[0])


def _draw_subject(rng: np.random.Generator) -> dict:
    """All of a subject's random parameters, drawn in a fixed order independent of the grid."""
    s: dict = {}
    s["size"] = rng.uniform(0.9, 1.1)  # overall scale of the organ
    s["center"] = rng.uniform(-0.06, 0.06, 2)
    s["aspect"] = rng.uniform(0.88, 1.14)
    s["angle"] = rng.uniform(-0.3, 0.3)  # orientation of the organ (radians)
    s["twist"] = rng.uniform(-0.5, 0.5)  # extra rotation from the first slice to the last
    s["z_shift"] = rng.uniform(-0.05, 0.05)  # slice position -> anatomy: shift, stretch, tilt
    s["z_stretch"] = rng.uniform(0.92, 1.08)
    s["tilt"] = rng.uniform(-0.04, 0.04, 2)
    s["r_out"] = (rng.uniform(0.26, 0.30), rng.uniform(0.46, 0.52))  # ring outer radius at z = 0 and z = 1
    s["wall"] = (rng.uniform(0.075, 0.095), rng.uniform(0.10, 0.13))  # ring thickness at z = 0 and z = 1
    s["core_fill"] = rng.uniform(0.68, 0.8)  # core radius / inner ring radius at z = 0
    s["core_end"] = rng.uniform(0.06, 0.085)  # core radius at z = 1
    s["core_aspect"] = rng.uniform(0.85, 1.15)
    s["core_drift"] = rng.uniform(-0.07, 0.07, 2)  # core centre offset at z = 1
    s["tail_start"] = rng.uniform(0.38, 0.52)  # where the tail appears
    s["tail_angle"] = np.pi / 4 + rng.uniform(-0.3, 0.3)  # the tail's direction from the ring centre
    s["tail_sweep"] = rng.uniform(0.25, 0.6) * rng.choice([-1.0, 1.0])  # its rotation around the ring along z
    s["tail_size"] = rng.uniform(0.085, 0.11)  # radial semi-axis when grown
    s["tail_elong"] = rng.uniform(1.4, 1.8)  # tangential / radial semi-axis
    s["tail_gap"] = rng.uniform(0.015, 0.035)
    # lobes of the ring: its radius times 1 + sum_k a_k(z) cos(k theta + phase_k), k = 2, 3, 4
    s["lobe_amps"] = rng.uniform(0.0, 0.06, (2, 3)) / np.array([1.0, 2.0, 3.0])  # at z = 0 and z = 1
    s["lobe_phases"] = rng.uniform(0, 2 * np.pi, 3)
    s["body_center"] = np.array([0.3, 0.3]) + rng.uniform(-0.08, 0.08, 2)
    s["body_radius"] = rng.uniform(1.4, 1.55)
    s["fat_width"] = rng.uniform(0.06, 0.1)
    s["vessel_center"] = np.array([-0.6, 0.52]) + rng.uniform(-0.05, 0.05, 2)
    s["vessel_drift"] = rng.uniform(-0.06, 0.06, 2)
    s["vessel_radius"] = rng.uniform(0.05, 0.07)
    s["deform_u"] = _modes(rng, 6, 0.25, 0.7, rng.uniform(0.03, 0.05))
    s["deform_v"] = _modes(rng, 6, 0.25, 0.7, rng.uniform(0.03, 0.05))
    s["deform_z"] = _modes(rng, 4, 0.25, 0.6, 0.015)
    s["tissue"] = {
        k: max(0.0, m + rng.uniform(-_TISSUE_JITTER, _TISSUE_JITTER)) if k != "air" else 0.0
        for k, m in _TISSUE_MEAN.items()
    }
    s["texture"] = _modes(rng, 8, 1.5, 4.0, rng.uniform(0.02, 0.035))
    s["bias"] = _modes(rng, 4, 0.1, 0.45, rng.uniform(0.1, 0.2))
    s["bias_gradient"] = rng.uniform(-0.12, 0.12, 3)
    s["gain"] = rng.uniform(0.8, 1.25)
    s["noise"] = rng.uniform(0.02, 0.04)  # Rician sigma relative to the unit tissue scale
    return s


# ---------------------------------------------------------------------------------------------- rendering


def phantom_affine(shape: Sequence[int], spacing: Sequence[float]) -> np.ndarray:
    """The RAS affine of a phantom: axis-aligned voxels of ``spacing`` mm, the grid centred on the origin."""
    shape, spacing = _check_shape(shape), _check_spacing(spacing)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = [-(n - 1) / 2 * s for n, s in zip(shape, spacing)]
    return affine


def _lin(a: float, b: float, t: np.ndarray) -> np.ndarray:
    return a + (b - a) * t


def _render(
    s: dict, shape: tuple[int, int, int], spacing: tuple[float, float, float]
) -> tuple[dict[str, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Tissue masks of subject ``s`` on the grid, and the grid axes ``(u, v, w)`` normalised to [-1, 1] (broadcastable
    arrays, for the texture and bias fields)."""
    nx, ny, nz = shape
    half = 0.5 * min(nx * spacing[0], ny * spacing[1])  # in-plane coordinates in [-1, 1] over the shorter side
    u = ((np.arange(nx) - (nx - 1) / 2) * spacing[0] / half)[:, None, None]
    v = ((np.arange(ny) - (ny - 1) / 2) * spacing[1] / half)[None, :, None]
    t = ((np.arange(nz) + 0.5) / nz)[None, None, :]
    w = 2 * t - 1  # slice coordinate in [-1, 1] for the random fields

    # smooth random deformation, then the subject's mapping of slices onto anatomy
    ud = u + _eval_modes(s["deform_u"], u, v, w)
    vd = v + _eval_modes(s["deform_v"], u, v, w)
    te = (t - 0.5 - s["z_shift"]) / s["z_stretch"] + 0.5 + s["tilt"][0] * u + s["tilt"][1] * v
    te = te + _eval_modes(s["deform_z"], u, v, w)

    # canonical organ coordinates: centred, rotated (with twist along z), unit aspect, unit size
    rot = np.exp(-1j * (s["angle"] + s["twist"] * te))
    q = (ud - s["center"][0] + 1j * (vd - s["center"][1])) * rot
    q = (q.real / np.sqrt(s["aspect"]) + 1j * q.imag * np.sqrt(s["aspect"])) / s["size"]
    amps = [_lin(a0, a1, te) for a0, a1 in zip(*s["lobe_amps"])]
    cis = np.exp(1j * s["lobe_phases"])

    def lobes(direction: np.ndarray) -> np.ndarray:
        """1 + sum_k a_k cos(k theta + phase_k) for the unit complex numbers ``direction`` = exp(i theta)."""
        d2 = direction * direction
        return (
            1.0
            + amps[0] * (cis[0] * d2).real
            + amps[1] * (cis[1] * d2 * direction).real
            + amps[2] * (cis[2] * d2 * d2).real
        )

    radius = np.abs(q)
    rho = radius / lobes(q / np.maximum(radius, 1e-9))  # the ring's radial coordinate

    r_out = np.maximum(_lin(*s["r_out"], te), 0.1)
    r_in = r_out - np.maximum(_lin(*s["wall"], te), 0.05)
    shell = (rho < r_out) & (rho >= r_in)

    r_in0 = s["r_out"][0] - s["wall"][0]
    r_core = np.maximum(_lin(min(s["core_fill"] * r_in0, r_in0 - 0.03), s["core_end"], te), 0.02)
    c = q - (s["core_drift"][0] + 1j * s["core_drift"][1]) * np.clip(te, 0.0, 1.0)
    ca = np.sqrt(s["core_aspect"])
    core = ((c.real * ca) ** 2 + (c.imag / ca) ** 2 < r_core**2) & (rho < r_in - 0.015)
    fluid = (rho < r_in) & ~core

    grow = np.sqrt(np.clip((te - s["tail_start"]) / 0.3, 0.0, 1.0))
    e_phi = np.exp(1j * (s["tail_angle"] - s["angle"] + s["tail_sweep"] * (te - s["tail_start"])))
    a_rad = s["tail_size"] * grow
    dist = r_out * lobes(e_phi) + s["tail_gap"] + a_rad
    d = (q - dist * e_phi) * e_phi.conj()  # the tail's frame: real part radial, imaginary part tangential
    # (radial / a)^2 + (tangential / (elong a))^2 < 1, written without dividing by a (zero below the tail's start)
    tail = d.real**2 + (d.imag / s["tail_elong"]) ** 2 < a_rad**2

    rb = np.hypot(ud - s["body_center"][0], vd - s["body_center"][1]) / s["body_radius"]
    body = rb < 1.0
    fat = body & (rb >= 1.0 - s["fat_width"] / s["body_radius"])
    vc1 = s["vessel_center"][0] + s["vessel_drift"][0] * w
    vc2 = s["vessel_center"][1] + s["vessel_drift"][1] * w
    vessel = np.hypot(ud - vc1, vd - vc2) < s["vessel_radius"]

    masks = {"body": body, "fat": fat, "vessel": vessel, "fluid": fluid, "tail": tail, "shell": shell, "core": core}
    return masks, (u, v, w)


def make_phantom(
    seed: int | Sequence[int],
    shape: Sequence[int] = DEFAULT_SHAPE,
    spacing: Sequence[float] = DEFAULT_SPACING,
    noise_scale: float = 1.0,
    intensity_scale: float = 1000.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Make one labelled phantom (see the module docstring for the anatomy).

    Args:
        seed: a non-negative integer, or a sequence of them (``write_phantom_dataset`` uses ``(seed, k)``).
            The same seed gives byte-identical arrays.
        shape: the grid size in voxels, ``(x, y, z)``; ``z`` is the slice axis.
        spacing: voxel size in mm, ``(x, y, z)``; the anatomy spans the field of view whatever the spacing.
        noise_scale: multiplies the subject's Rician noise level (0 gives a noise-free image).
        intensity_scale: the image's unit, in arbitrary MRI-like units (soft tissue is about 0.4 of it).

    Returns:
        ``(image, label, affine)``: a float32 image, a uint8 label with values in ``0..3`` (``PHANTOM_LABELS``),
        both of ``shape``, and the 4x4 RAS affine (``phantom_affine``).
    """
    shape, spacing = _check_shape(shape), _check_spacing(spacing)
    seeds = [seed] if np.isscalar(seed) else list(seed)
    if not seeds or any(int(x) != x or int(x) < 0 for x in seeds):
        raise ValueError(f"seed must be a non-negative integer or a sequence of them, got {seed!r}")
    rng = np.random.default_rng(np.random.SeedSequence([int(x) for x in seeds]))
    s = _draw_subject(rng)
    masks, (u, v, w) = _render(s, shape, spacing)

    label = np.zeros(shape, dtype=np.uint8)
    label[masks["tail"]] = 3
    label[masks["shell"]] = 1
    label[masks["core"]] = 2

    tissue = s["tissue"]
    image = np.zeros(shape, dtype=np.float64)
    image[masks["body"]] = tissue["body"]
    image[masks["fat"]] = tissue["fat"]
    image[masks["vessel"] & masks["body"] & (label == 0)] = tissue["vessel"]
    image[masks["fluid"]] = tissue["fluid"]
    for name, k in (("shell", 1), ("core", 2), ("tail", 3)):
        image[label == k] = tissue[name]
    image *= 1.0 + _eval_modes(s["texture"], u, v, w)  # tissue texture
    image = ndimage.gaussian_filter(image, sigma=0.6, mode="nearest")  # partial volume
    g = s["bias_gradient"]
    image *= np.exp(_eval_modes(s["bias"], u, v, w) + g[0] * u + g[1] * v + g[2] * w)  # coil bias field
    sigma = s["noise"] * float(noise_scale)
    if sigma > 0:  # Rician noise: the magnitude of a complex signal with Gaussian noise on both channels
        n1, n2 = rng.standard_normal((2, *shape))
        image = np.sqrt((image + sigma * n1) ** 2 + (sigma * n2) ** 2)
    image = (image * (s["gain"] * float(intensity_scale))).astype(np.float32)
    return image, label, phantom_affine(shape, spacing)


# ---------------------------------------------------------------------------------------------- data set


def case_seed(seed: int, k: int) -> tuple[int, int]:
    """The seed of case ``k`` of a phantom data set made with ``seed``."""
    return (int(seed), int(k))


def _case_name(k: int) -> str:
    return f"phantom_{k:03d}"


def _describe(params: Mapping) -> str:
    return ", ".join(f"{k}={params[k]}" for k in sorted(params))


def write_phantom_dataset(
    output_dir,
    n: int = 20,
    seed: int = 0,
    shape: Sequence[int] = DEFAULT_SHAPE,
    spacing: Sequence[float] | None = None,
    anisotropic: bool = False,
    overwrite: bool = False,
) -> Path:
    """Write ``n`` phantoms as an MSD-style folder and return the path of its ``dataset.json``.

    The folder holds ``imagesTr/phantom_XXX.nii.gz`` (float32), ``labelsTr/phantom_XXX.nii.gz`` (uint8) and a
    ``dataset.json`` in the MSD format (``name``, ``description``, ``labels``, ``modality``, ``numTraining``,
    ``training``, ``test``), which is also a volssl datalist, with the ``spacing`` and the generation parameters
    (``"phantom_parameters"``: seed, shape, spacing, generator version). Case ``k`` is ``make_phantom((seed, k))``.

    Re-running with the same parameters keeps the existing files (a larger ``n`` adds cases, a smaller one lists
    fewer) unless ``overwrite``. A folder made with other parameters, or holding a ``dataset.json`` or phantom files
    of unknown origin, is refused unless ``overwrite``, which rewrites it (removing phantom files beyond ``n`` made
    with the other parameters).

    Args:
        output_dir: the folder to write (created if needed).
        n: the number of cases.
        seed: the data set's seed.
        shape: the grid size in voxels, ``(x, y, z)``, ``z`` the slice axis.
        spacing: voxel size in mm, ``(x, y, z)``; default ``DEFAULT_SPACING``, or ``ANISOTROPIC_SPACING`` with
            ``anisotropic``.
        anisotropic: use thick slices, ``ANISOTROPIC_SPACING`` (1 x 1 x 3 mm); not together with ``spacing``.
        overwrite: rewrite existing files, and replace a folder made with other parameters.

    Returns:
        The path of the written ``dataset.json``.

    Raises:
        VolsslInputError: the folder holds data made with other parameters (or of unknown origin) and not
            ``overwrite``; the message names the folder and both parameter sets.
        ValueError: bad arguments.
    """
    if int(n) != n or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    n, seed = int(n), int(seed)
    shape = _check_shape(shape)
    spacing = _resolve_spacing(spacing, anisotropic)
    params = {
        "generator": "volssl.data.phantom",
        "version": GENERATOR_VERSION,
        "seed": seed,
        "shape": list(shape),
        "spacing": list(spacing),
    }

    out = Path(output_dir)
    json_path = out / "dataset.json"
    img_dir, lab_dir = out / "imagesTr", out / "labelsTr"
    existing_cases = sorted(
        {p.name for d in (img_dir, lab_dir) if d.is_dir() for p in d.iterdir() if _CASE_RE.match(p.name)}
    )
    old_params = None
    if json_path.is_file():
        try:
            old_params = json.loads(json_path.read_text()).get(PARAMS_KEY)
        except (json.JSONDecodeError, AttributeError):
            old_params = None
        if old_params != params and not overwrite:
            if old_params is None:
                raise VolsslInputError(
                    json_path,
                    "this dataset.json was not written by the phantom generator; choose another output folder, or "
                    "pass overwrite=True to replace it",
                )
            raise VolsslInputError(
                json_path,
                f"this folder holds phantoms made with {_describe(old_params)}, not the requested {_describe(params)};"
                " refusing to mix them: choose another output folder, or pass overwrite=True to regenerate it",
            )
    elif existing_cases and not overwrite:
        raise VolsslInputError(
            out,
            f"holds {len(existing_cases)} phantom files but no dataset.json saying how they were made; refusing to mix"
            " them with new ones: choose another output folder, or pass overwrite=True to regenerate them",
        )

    datalist = {
        "name": "phantom",
        "description": "Synthetic MRI-like 3D phantoms (volssl.data.phantom): a ring that grows along z, a core "
        "that shrinks inside it, and a tail that appears part-way up the volume",
        "reference": "volssl synthetic data",
        "licence": "CC0",
        "tensorImageSize": "3D",
        "modality": {"0": "synthetic MRI"},
        "labels": dict(PHANTOM_LABELS),
        "spacing": list(spacing),
        PARAMS_KEY: params,
        "numTraining": 0,
        "numTest": 0,
        "training": [],
        "test": [],
    }
    if old_params != params:
        if old_params is not None or existing_cases:  # overwrite=True: drop the other parameters' extra cases
            for d in (img_dir, lab_dir):
                for name in existing_cases:
                    m = _CASE_RE.match(name)
                    if int(m.group(1)) >= n and (d / name).is_file():
                        (d / name).unlink()
        # record the parameters before writing any case, so an interrupted run is never mistaken for another one
        save_datalist(datalist, json_path)

    written = skipped = 0
    training = []
    for k in range(n):
        name = _case_name(k) + ".nii.gz"
        img_path, lab_path = img_dir / name, lab_dir / name
        if not overwrite and img_path.is_file() and lab_path.is_file():
            skipped += 1
        else:
            image, label, affine = make_phantom(case_seed(seed, k), shape=shape, spacing=spacing)
            save_nifti(label, affine, lab_path, dtype=np.uint8)
            save_nifti(image, affine, img_path, dtype=np.float32)
            written += 1
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    datalist["training"] = training
    datalist["numTraining"] = len(training)
    save_datalist(datalist, json_path)
    logger.info("phantoms in %s: %d written, %d kept (%s)", out, written, skipped, _describe(params))
    return json_path


# ---------------------------------------------------------------------------------------------- preview


def save_phantom_preview(
    image: np.ndarray,
    label: np.ndarray,
    path,
    spacing: Sequence[float] = DEFAULT_SPACING,
    num_slices: int = 5,
    title: str | None = None,
) -> Path:
    """Write a PNG of ``num_slices`` axial slices at evenly spaced ``z`` (the image above, the label overlaid
    below) and a coronal view through the centre, and return its path.

    Uses matplotlib's Agg canvas directly (no pyplot, no change to the global backend).

    Args:
        image: the ``(x, y, z)`` image.
        label: the ``(x, y, z)`` label, classes ``0..3``.
        path: the PNG file to write.
        spacing: voxel size in mm, for the aspect ratios.
        num_slices: how many axial slices to show.
        title: the figure's title.

    Returns:
        The path written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    image, label = np.asarray(image, dtype=np.float32), np.asarray(label)
    if image.ndim != 3 or image.shape != label.shape:
        raise ValueError(f"image and label must be 3D arrays of one shape, got {image.shape} and {label.shape}")
    sx, sy, sz = (float(s) for s in spacing)
    nz = image.shape[2]
    zs = np.unique(np.linspace(0, nz - 1, max(1, int(num_slices))).round().astype(int))
    vmin, vmax = np.percentile(image, [0.5, 99.5])
    colours = ListedColormap(["#ff8c00", "#00d0ff", "#ff2bd6", "#7cff3a", "#ffe600", "#8a5cff"])

    fig = Figure(figsize=(2.3 * (len(zs) + 1), 5.0), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, len(zs) + 1, squeeze=False)

    def show(ax, img2d, lab2d, aspect, overlay):
        ax.imshow(img2d.T, cmap="gray", vmin=vmin, vmax=vmax, origin="lower", aspect=aspect, interpolation="nearest")
        if overlay:
            ax.imshow(
                np.ma.masked_equal(lab2d.T, 0),
                cmap=colours,
                vmin=0.5,
                vmax=colours.N + 0.5,
                alpha=0.45,
                origin="lower",
                aspect=aspect,
                interpolation="nearest",
            )
        ax.set_xticks([])
        ax.set_yticks([])

    for col, z in enumerate(zs):
        for row in (0, 1):
            show(axes[row, col], image[:, :, z], label[:, :, z], sy / sx, overlay=row == 1)
        present = [PHANTOM_LABELS.get(str(c), str(c)) for c in np.unique(label[:, :, z]) if c > 0]
        axes[0, col].set_title(f"z={z}  p={(z + 1) / nz:.2f}", fontsize=9)
        axes[1, col].set_xlabel(", ".join(present) or "-", fontsize=8)
    fg = np.argwhere(label > 0)
    yc = int(np.median(fg[:, 1])) if len(fg) else image.shape[1] // 2
    for row in (0, 1):
        show(axes[row, -1], image[:, yc, :], label[:, yc, :], sz / sx, overlay=row == 1)
    axes[0, -1].set_title(f"coronal y={yc} (z up)", fontsize=9)
    classes = [int(c) for c in np.unique(label) if c > 0]
    handles = [
        Patch(color=colours((c - 1) % colours.N), alpha=0.6, label=f"{c} {PHANTOM_LABELS.get(str(c), '')}".strip())
        for c in classes
    ]
    if handles:
        axes[1, -1].legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.05), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(str(path), format="png")
    return path
