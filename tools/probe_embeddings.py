"""Probe the slice embeddings of a pretrained (or randomly initialised) encoder: position, neighbours, collapse.

Usage (from the repository root)::

    python tools/probe_embeddings.py --bundle bundles/sal_mri_segmentation --datalist runs/hippocampus/datalist.json \\
        --role test --output_dir runs/probe/sal --run_dir runs/hippo_cmp/sal/pretrain --overlay cpu_small.json

Loads the encoder of ``RUN/models/pretrain.pt`` into the bundle's network, built with the values the run recorded
(``RUN/models/pretraining_record.json``: ``features``, ``in_channels``, ``patch_size``, the preprocessing; no overlay
needs repeating, and an ``--overlay`` or ``--overrides`` value that differs from the record is an error naming
both); without ``--run_dir``: the same encoder at random initialisation, seeded by ``--seed``, from
``configs/pretrain.json`` and the overlays. Embeds every slice of the role's volumes (preprocessed as in pretraining,
centre-cropped to the pretraining patch or ``--patch_size``) as the globally average-pooled bottleneck features (``--level``), and prints
ONE JSON line with ``position_r2``, ``nn_position_error``, ``cosine_mean`` and ``channel_std`` (definitions in
:mod:`volssl.metrics.embeddings`) plus the counts. Writes ``OUT/embeddings.json`` (the same line) and
``OUT/embeddings.png`` (PCA of the L2-normalised embeddings, coloured by slice position, one line per volume).
Everything else goes to stderr. Exit status 1 with a one-line message on bad input.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import fire
import torch

from volssl.io import VolsslInputError

REPO_ROOT = Path(__file__).resolve().parents[1]


PRETRAINING_RECORD = "pretraining_record.json"


def _config(bundle: Path, overlay, overrides: dict, run_dir: str | None = None):
    """``pretrain.json`` + the overlays + the overrides, then (with ``run_dir``) the values the run recorded for
    the network and its input (those ``inference.json`` also has, and the pretraining ``patch_size``)."""
    from monai.bundle import ConfigParser

    from volssl.bundle import apply_recorded_values

    configs = bundle / "configs"
    files = [configs / "pretrain.json"]
    if overlay:
        names = [n.strip() for n in overlay.split(",")] if isinstance(overlay, str) else [str(n) for n in overlay]
        files += [configs / n for n in names if n]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise VolsslInputError(missing[0], "config file not found")
    parser = ConfigParser()
    parser.read_config([str(f) for f in files])
    for key, value in overrides.items():
        parser[key] = value
    if run_dir is not None:
        record = Path(run_dir) / "models" / PRETRAINING_RECORD
        if not record.is_file():
            print(f"warning: {record}: not found (a run of an older version); the network is built from "
                  "pretrain.json and the overlays given, which must be those of the run", file=sys.stderr)
            return parser
        given = {k: (v, f"--overrides {k}") for k, v in overrides.items()}
        for overlay_file in files[1:]:
            for key, value in ConfigParser.load_config_file(str(overlay_file)).items():
                given.setdefault(key, (value, f"--overlay {overlay_file.name}"))
        # the network and its input: what inference.json rebuilds, plus the pretraining patch the probe crops to
        network_keys = [*ConfigParser.load_config_file(str(configs / "inference.json")), "patch_size"]
        applied = apply_recorded_values(parser, record, given, keys=network_keys)
        print(f"network values from {record}: {applied}", file=sys.stderr)
    return parser


def main(
    bundle: str,
    datalist: str,
    output_dir: str,
    role: str = "test",
    run_dir: str | None = None,
    overlay=None,
    overrides=None,
    patch_size=None,
    level: int = -1,
    max_volumes: int | None = None,
    dataset_dir: str | None = None,
    seed: int = 0,
    batch_size: int = 64,
    threads: int | None = None,
) -> None:
    """Embed every slice of ``role`` with the encoder of ``run_dir`` (or a random one) and print the diagnostics.

    Args:
        bundle: the bundle folder (its ``configs/pretrain.json`` defines the network and the preprocessing).
        datalist: the datalist JSON.
        output_dir: where ``embeddings.json`` and ``embeddings.png`` go.
        role: the datalist role whose volumes are probed (at least two volumes).
        run_dir: a pretraining bundle root holding ``models/pretrain.pt``; ``None``: random initialisation.
        overlay: config file name(s) in the bundle's ``configs/`` merged after ``pretrain.json`` (e.g.
            ``cpu_small.json``; several joined by commas) for the random initialisation; with ``--run_dir`` the run's
            record gives the network values (an overlay value that differs from the record is an error).
        overrides: config values, e.g. ``"{'features': 16}"``.
        patch_size: centre crop of every slice (default: the config's ``patch_size``); ``"none"``: whole slices
            (they must all have the same size, divisible by 16).
        level: the encoder level pooled (-1: bottleneck).
        max_volumes: probe only the first this many volumes of the role.
        dataset_dir: the folder the datalist's paths are relative to (default: as the datalist says).
        seed: torch seed of the random initialisation.
        batch_size: slices per forward pass.
        threads: torch intra-op threads (default: torch's choice).
    """
    from volssl.data import load_images
    from volssl.metrics.embeddings import (
        embedding_diagnostics,
        load_probe_slices,
        pooled_features,
        project_2d,
    )
    from volssl.networks import UNetEncoder2d, load_encoder_weights
    from volssl.viz import plot_embeddings

    if threads:
        torch.set_num_threads(int(threads))
    start = time.perf_counter()
    overrides = overrides or {}
    if isinstance(overrides, str):
        import ast

        overrides = ast.literal_eval(overrides)
    bundle_path = Path(bundle)
    if not bundle_path.is_absolute() and not bundle_path.is_dir():
        bundle_path = REPO_ROOT / bundle
    parser = _config(bundle_path, overlay, overrides, run_dir)
    features, in_channels = int(parser["features"]), int(parser["in_channels"])
    crop = parser["patch_size"] if patch_size is None else patch_size
    if isinstance(crop, str):
        crop = None if crop.lower() == "none" else json.loads(crop)
    slice_axis = int(parser["slice_axis"])
    volume_transform = parser.get_parsed_content("pretrain#preprocessing")

    torch.manual_seed(int(seed))
    encoder = UNetEncoder2d(in_channels, features)
    ckpt = None
    if run_dir is not None:
        ckpt = Path(run_dir) / "models" / "pretrain.pt"
        load_encoder_weights(encoder, ckpt, target_prefix="")
    data = load_images(datalist, [role], dataset_dir)
    probe = load_probe_slices(data, volume_transform, crop, slice_axis, max_volumes)
    if len(probe["cases"]) < 2:
        raise VolsslInputError(datalist, f"role '{role}' has {len(probe['cases'])} volume(s); the probe needs two")
    feats = pooled_features(encoder, probe["images"], level, batch_size, device="cpu")
    result = {
        "bundle": str(bundle),
        "run_dir": None if run_dir is None else str(run_dir),
        "checkpoint": None if ckpt is None else str(ckpt),
        "role": role,
        "n_volumes": len(probe["cases"]),
        "n_slices": int(feats.shape[0]),
        "feature_dim": int(feats.shape[1]),
        "level": int(level),
        "patch_size": crop,
        **embedding_diagnostics(feats, probe["positions"], probe["volumes"]),
    }
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    line = json.dumps(result)
    (out / "embeddings.json").write_text(line + "\n")
    arm = "random init" if run_dir is None else Path(run_dir).name
    title = (f"{bundle_path.name}, {arm} ({role}: {result['n_volumes']} volumes)\n"
             f"R2 {result['position_r2']:.3f}, NN error {result['nn_position_error']:.3f}, "
             f"cosine {result['cosine_mean']:.3f}, channel std {result['channel_std']:.4f}")
    plot_embeddings(project_2d(feats), probe["positions"], probe["volumes"], out / "embeddings.png", title=title)
    print(f"{result['n_slices']} slices of {result['n_volumes']} volumes in {time.perf_counter() - start:.1f} s; "
          f"wrote {out / 'embeddings.json'} and {out / 'embeddings.png'}", file=sys.stderr)
    print(line)


def cli() -> None:
    try:
        fire.Fire(main)
    except VolsslInputError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    cli()
