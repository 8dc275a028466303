"""Loading the pretrained encoder into a fine-tuning network (the projection head and anything else is dropped).

MONAI's ``CheckpointLoader`` handler cannot filter keys by prefix, so the bundles call :func:`load_encoder_weights`
(or :func:`with_encoder_weights`, which returns the model) from a config expression, e.g.::

    "imports": ["$import volssl", "$import volssl.networks"],
    "network": "$volssl.networks.with_encoder_weights(@network_def.to(@device), @pretrained_ckpt)",
    "load_pretrained": "$volssl.networks.load_encoder_weights(@network, @pretrained_ckpt) if @load_pretrain else None"

(MONAI binds ``$import volssl.networks`` to the name ``volssl.networks``, not ``volssl``: keep ``$import volssl`` too),
or without imports::

    "network": {"_target_": "volssl.networks.with_encoder_weights", "model": "@network_def",
                "checkpoint_path": "@pretrained_ckpt"}
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn
from volssl.io.errors import VolsslInputError

__all__ = [
    "DEFAULT_STATE_KEYS",
    "PRETRAIN_HINT",
    "extract_state_dict",
    "load_encoder_weights",
    "with_encoder_weights",
    "with_weights",
]

logger = logging.getLogger(__name__)

#: Keys tried in order when a checkpoint holds the model state inside a dict (MONAI ``CheckpointSaver`` saves
#: ``{"network": ..., "optimizer": ...}``; PCL and CORAL save ``{"net": ...}``).
DEFAULT_STATE_KEYS: tuple[str, ...] = ("network", "model", "state_dict", "net")

#: What to do when the pretrained encoder a fine-tuning run asks for is missing.
PRETRAIN_HINT = "run configs/pretrain.json first, or pass --load_pretrain False to fine-tune from random initialisation"

_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DataParallel / DistributedDataParallel, torch.compile


def _is_state_dict(obj: object) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def _strip_wrappers(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = dict(state)
    changed = True
    while changed and out:
        changed = False
        for p in _WRAPPER_PREFIXES:
            if all(k.startswith(p) for k in out):
                out = {k[len(p) :]: v for k, v in out.items()}
                changed = True
    return out


def extract_state_dict(
    checkpoint: object, path: str | os.PathLike = "<checkpoint>", key: str | None = None
) -> dict[str, torch.Tensor]:
    """Find the model state dict in a loaded checkpoint object.

    Args:
        checkpoint: the object returned by ``torch.load``.
        path: the file it came from, only for error messages.
        key: the key holding the model state; ``None`` tries :data:`DEFAULT_STATE_KEYS` in order, then the object
            itself as a plain state dict.

    Returns:
        the state dict (name -> tensor), with a common ``module.`` (DataParallel) or ``_orig_mod.`` (torch.compile)
        prefix removed.

    Raises:
        VolsslInputError: ``key`` is missing, or no state dict is found.
    """
    if not isinstance(checkpoint, Mapping):
        raise VolsslInputError(path, f"not a state dict or a dict holding one (got {type(checkpoint).__name__})")
    if key is not None:
        if key not in checkpoint:
            available = sorted(map(str, checkpoint))
            raise VolsslInputError(path, f"key {key!r} not found; the checkpoint has keys {available}")
        state = checkpoint[key]
        if not _is_state_dict(state):
            raise VolsslInputError(path, f"checkpoint[{key!r}] is not a state dict (got {type(state).__name__})")
        return _strip_wrappers(state)
    for k in DEFAULT_STATE_KEYS:
        if k in checkpoint and _is_state_dict(checkpoint[k]):
            return _strip_wrappers(checkpoint[k])
    if _is_state_dict(checkpoint):
        return _strip_wrappers(checkpoint)
    raise VolsslInputError(
        path,
        f"not a state dict, and none of the keys {list(DEFAULT_STATE_KEYS)} holds one; the checkpoint has keys "
        f"{sorted(map(str, checkpoint))[:20]} (pass key=...)",
    )


def _read_checkpoint(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt file, or objects that weights_only refuses to unpickle
        raise VolsslInputError(path, f"cannot read checkpoint with torch.load(weights_only=True): {err}") from err


def load_encoder_weights(
    model: nn.Module,
    checkpoint_path: str | os.PathLike,
    strict: bool = True,
    prefix: str = "encoder.",
    key: str | None = None,
    target_prefix: str | None = None,
) -> list[str]:
    """Copy the encoder weights (and BatchNorm statistics) of a checkpoint into ``model``, in place.

    Only the entries whose name starts with ``prefix`` are read (the projection head and any decoder in the file are
    ignored); only the entries of ``model`` starting with ``target_prefix`` are written (its decoder and head are left
    untouched). The file is read with ``torch.load(map_location="cpu", weights_only=True)``; the values are copied onto
    the model's own devices and dtypes.

    Args:
        model: the network to initialise, e.g. a :class:`~volssl.networks.UNet2d`.
        checkpoint_path: a file saved by ``torch.save``: a plain state dict, or a dict holding it (see ``key``).
        strict: when ``True`` every encoder entry of the model must be in the checkpoint and vice versa; when
            ``False`` the entries present in both are copied (at least one must be). Shape mismatches raise either way.
        prefix: name prefix of the encoder entries in the checkpoint.
        key: the checkpoint key holding the state dict; ``None`` tries ``"network"``, ``"model"``, ``"state_dict"``,
            ``"net"`` and then the file as a plain state dict.
        target_prefix: name prefix of the encoder entries in ``model``; ``None`` means ``prefix``. Use ``""`` to load
            into a bare :class:`~volssl.networks.UNetEncoder2d`.

    Returns:
        the sorted names (in ``model``) of the entries that were loaded.

    Raises:
        VolsslInputError: (a ``ValueError``, its message naming the file) the file is missing or unreadable, holds no
            state dict, has no entry starting with ``prefix``, the model has no entry starting with ``target_prefix``,
            a shape differs (e.g. another base width ``features``), or, with ``strict``, an entry is missing on either
            side.
    """
    path = Path(checkpoint_path)
    if not path.is_file():
        raise VolsslInputError(path, f"pretrained encoder checkpoint not found: {PRETRAIN_HINT}")
    state = extract_state_dict(_read_checkpoint(path), path, key)

    tgt_prefix = prefix if target_prefix is None else target_prefix
    source = {name[len(prefix) :]: value for name, value in state.items() if name.startswith(prefix)}
    if not source:
        raise VolsslInputError(
            path, f"no entries starting with {prefix!r}; first keys in the checkpoint: {sorted(state)[:10]}"
        )
    model_state = model.state_dict()
    target = {name[len(tgt_prefix) :]: value for name, value in model_state.items() if name.startswith(tgt_prefix)}
    if not target:
        raise VolsslInputError(path, f"the model {type(model).__name__} has no entries starting with {tgt_prefix!r}")

    mismatched = [
        f"{tgt_prefix}{n}: checkpoint {tuple(source[n].shape)} vs model {tuple(t.shape)}"
        for n, t in target.items()
        if n in source and source[n].shape != t.shape
    ]
    if mismatched:
        raise VolsslInputError(
            path,
            f"{len(mismatched)} encoder shape mismatch(es) (was it pretrained with another base width `features` or "
            f"in_channels?): {'; '.join(mismatched[:5])}",
        )
    missing = sorted(n for n in target if n not in source)
    unexpected = sorted(n for n in source if n not in target)
    if strict and (missing or unexpected):
        raise VolsslInputError(
            path,
            f"encoder entries differ (strict=True): missing in the checkpoint {[prefix + n for n in missing[:10]]}, "
            f"not in the model {[prefix + n for n in unexpected[:10]]}",
        )
    common = [n for n in target if n in source]
    if not common:
        raise VolsslInputError(path, f"no encoder entry of the checkpoint matches the model under {tgt_prefix!r}")

    with torch.no_grad():
        for n in common:
            target[n].copy_(source[n])  # state_dict() tensors share storage with the parameters and buffers
    loaded = sorted(tgt_prefix + n for n in common)
    logger.info(
        "loaded %d encoder entries from %s (%d missing, %d unused)", len(loaded), path, len(missing), len(unexpected)
    )
    return loaded


def with_encoder_weights(
    model: nn.Module,
    checkpoint_path: str | os.PathLike | None,
    strict: bool = True,
    prefix: str = "encoder.",
    key: str | None = None,
    target_prefix: str | None = None,
) -> nn.Module:
    """:func:`load_encoder_weights` that returns ``model``, for bundle configs; a no-op when there is no checkpoint.

    Args:
        model: the network to initialise.
        checkpoint_path: the pretrained checkpoint; ``None`` or ``""`` keeps the random initialisation (logged).
        strict: see :func:`load_encoder_weights`.
        prefix: see :func:`load_encoder_weights`.
        key: see :func:`load_encoder_weights`.
        target_prefix: see :func:`load_encoder_weights`.

    Returns:
        ``model`` itself, its encoder loaded in place.

    Raises:
        VolsslInputError: see :func:`load_encoder_weights`.
    """
    if checkpoint_path is None or str(checkpoint_path) == "":
        logger.info("no pretrained checkpoint given: %s keeps its random initialisation", type(model).__name__)
        return model
    load_encoder_weights(model, checkpoint_path, strict=strict, prefix=prefix, key=key, target_prefix=target_prefix)
    return model


def with_weights(model: nn.Module, checkpoint_path: str | os.PathLike | None, key: str | None = None) -> nn.Module:
    """Load a whole-network checkpoint (e.g. a bundle's ``models/model.pt``) into ``model`` and return it; a no-op
    when ``checkpoint_path`` is ``None`` or ``""``. For ``train.json``'s ``init_weights``: continue training from
    earlier weights (a new run, unlike ``resume``).

    Raises:
        VolsslInputError: a missing or unreadable file, no state dict in it, or entries/shapes that differ from
            ``model`` (e.g. weights trained with another ``features`` or ``num_classes``).
    """
    if checkpoint_path is None or str(checkpoint_path) == "":
        return model
    path = Path(checkpoint_path)
    if not path.is_file():
        raise VolsslInputError(path, "init_weights checkpoint not found (pass --init_weights None to start afresh)")
    state = extract_state_dict(_read_checkpoint(path), path, key)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        raise VolsslInputError(
            path, f"does not fit {type(model).__name__} (trained with other network values?): {' '.join(first[:3])}"
        ) from err
    logger.info("initialised %s from %s", type(model).__name__, path)
    return model
