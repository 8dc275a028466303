"""The batched data path: batches of slices or patches sampled and augmented on the training device.

These are drop-in ``train_data_loader``s of MONAI's ``SupervisedTrainer`` (and CRLN's unlabelled source): iterables
with a length (the iterations of an epoch) whose items are batch dicts of tensors already on the training device.
They replace ``SliceDataset`` / ``SlicePairDataset`` / ``CacheDataset`` + ``DataLoader``, which augment one sample at
a time on the CPU; the volumes are cached once (:mod:`volssl.data.tensor_cache`) and augmented batch by batch
(:mod:`volssl.data.batch_augment`) with the same distributions.

Epochs and randomness: an epoch is, as with the ``DataLoader`` it replaces, one shuffled pass over the items
(``iterations_per_epoch=None``), or ``iterations_per_epoch`` batches drawn from successive shuffled passes (as
``RandomSampler(num_samples=...)``). Every epoch's draws come from generators seeded with ``(seed, epoch)``, so a run
resumed at an epoch boundary continues exactly as an uninterrupted one; attach
:class:`volssl.engines.EpochSeed` (or call :meth:`set_epoch`) so that the epoch is the trainer's. Under
``torch.distributed`` every process draws the same order and takes its own share of it (as ``DistributedSampler``),
with its own augmentation stream.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch

from .batch_augment import BatchPatchSampler3d, BatchSliceAugmentation
from .pairs import max_slice_offset, partner_candidates, sparse_volume_message
from .tensor_cache import SliceTensorCache, VolumeTensorCache

__all__ = ["EpochBatches", "SliceBatchLoader", "PatchBatchLoader", "SLICE_BATCH_MODES"]

SLICE_BATCH_MODES = ("single", "two_views", "pairs")


def _distributed() -> tuple[int, int]:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class EpochBatches:
    """The batch order of an epoch, seeded by ``(seed, epoch)``: the common part of the batched loaders.

    Args:
        num_items: how many items there are to draw from.
        batch_size: items per batch.
        iterations_per_epoch: batches per epoch and per process, drawn from successive shuffled passes (under
            ``torch.distributed`` every process runs this many, on disjoint draws: the iteration-counted schedules
            of CRLN stay what one process would run); ``None``: one pass, shared out like ``DistributedSampler``.
        drop_last: with one pass, drop the last incomplete batch.
        seed: the run's seed.
        rank, world_size: this process's share under ``torch.distributed`` (``None``: read from it).
    """

    def __init__(
        self,
        num_items: int,
        batch_size: int,
        iterations_per_epoch: int | None = None,
        drop_last: bool = False,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        if num_items < 1:
            raise ValueError("no items to draw batches from")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.num_items, self.batch_size = int(num_items), int(batch_size)
        self.iterations_per_epoch = None if iterations_per_epoch in (None, 0) else int(iterations_per_epoch)
        self.drop_last = bool(drop_last)
        self.seed = int(seed)
        r, w = _distributed()
        self.rank = r if rank is None else int(rank)
        self.world_size = w if world_size is None else int(world_size)
        self.epoch = 1
        if len(self) < 1:
            raise ValueError(
                f"an epoch would hold no batch: {num_items} items, batch size {batch_size}, drop_last={drop_last}"
            )

    def __len__(self) -> int:
        if self.iterations_per_epoch is not None:
            return self.iterations_per_epoch
        if self.drop_last:
            total = self.num_items // self.batch_size
        else:
            total = math.ceil(self.num_items / self.batch_size)
        return max(1, math.ceil(total / self.world_size)) if total else 0

    def set_epoch(self, epoch: int) -> None:
        """The epoch (1-based, the trainer's) whose draws the next pass makes (each pass then moves it on by one,
        so a loader iterated without a trainer still draws anew every pass)."""
        self.epoch = int(epoch)

    def start_pass(self) -> int:
        """The epoch of the pass that starts now (and the next one after it)."""
        epoch = self.epoch
        self.epoch += 1
        return epoch

    def generator(self, device: torch.device | str, epoch: int, stream: int, shared: bool = False) -> torch.Generator:
        """A generator on ``device`` for ``epoch``'s stream ``stream`` (``shared``: the same on every process)."""
        rank = 0 if shared else self.rank + 1
        g = torch.Generator(device=torch.device(device))
        g.manual_seed((self.seed * 1_000_003 + epoch * 7_919 + stream * 104_729 + rank * 15_485_863) % 2**63)
        return g

    def batches(self, epoch: int) -> Iterator[torch.Tensor]:
        """The item indices of each batch of this process in ``epoch`` (CPU int64 tensors)."""
        g = self.generator("cpu", epoch, stream=0, shared=True)
        if self.iterations_per_epoch is not None:
            needed = self.iterations_per_epoch * self.batch_size * self.world_size
            order = torch.cat(
                [torch.randperm(self.num_items, generator=g) for _ in range(math.ceil(needed / self.num_items))]
            )[:needed]
        else:
            order = torch.randperm(self.num_items, generator=g)
            if self.drop_last:
                order = order[: (self.num_items // self.batch_size) * self.batch_size]
        chunks = list(order.split(self.batch_size))
        mine = chunks[self.rank :: self.world_size]
        if len(mine) < len(self):  # an even share for every process, as DistributedSampler pads
            mine += chunks[: len(self) - len(mine)]
        yield from mine[: len(self)]


class SliceBatchLoader(EpochBatches):
    """Batches of augmented 2D slices from a :class:`~volssl.data.tensor_cache.SliceTensorCache`, on the device.

    Modes (the items of a batch of B):

    - ``"single"`` (fine-tuning): ``image`` (B, C, h, w) float32, ``label`` (B, 1, h, w) int64 when the cache has
      labels (the same geometry, nearest interpolation), ``position`` (B,);
    - ``"two_views"`` (CORAL, PCL, SimCLR): ``image`` and ``image_2``, two independent augmentations of the same B
      slices, and ``position``;
    - ``"pairs"`` (SAL): ``image`` (the anchor) and ``image_2`` (a partner slice of the same volume within
      ``pair_threshold`` in normalised position, drawn with the rules of :class:`volssl.data.SlicePairDataset`),
      ``position``, ``position_2``, ``slice_index``, ``slice_index_2``; ``shared_augmentation`` gives both slices of a
      pair the same crop, flips and spatial transform (else independent draws).

    Args:
        cache: the cached slices.
        augmentation: the batched augmentation (:class:`~volssl.data.batch_augment.BatchSliceAugmentation`).
        batch_size: slices (or pairs) per batch.
        mode: one of :data:`SLICE_BATCH_MODES`.
        iterations_per_epoch, drop_last, seed, rank, world_size: see :class:`EpochBatches`.
        pair_threshold: ``t`` of the pairs mode.
        shared_augmentation: one draw for both slices of a pair (pairs mode).
        device: the training device (default: the cache's).
    """

    def __init__(
        self,
        cache: SliceTensorCache,
        augmentation: BatchSliceAugmentation,
        batch_size: int,
        mode: str = "single",
        iterations_per_epoch: int | None = None,
        drop_last: bool = False,
        seed: int = 0,
        pair_threshold: float = 0.1,
        shared_augmentation: bool = True,
        device: torch.device | str | None = None,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        if mode not in SLICE_BATCH_MODES:
            raise ValueError(f"mode must be one of {SLICE_BATCH_MODES}, got {mode!r}")
        super().__init__(int(cache.items.numel()), batch_size, iterations_per_epoch, drop_last, seed, rank, world_size)
        self.cache, self.augmentation, self.mode = cache, augmentation, mode
        self.device = torch.device(device) if device is not None else cache.device
        self.shared_augmentation = bool(shared_augmentation)
        self.pair_threshold = float(pair_threshold)
        self.has_label = cache.label_key in cache.buffers
        if mode == "pairs":
            self._build_partners()

    def _build_partners(self) -> None:
        """Per item, the candidate partners (cache indices, padded) with the rules of ``partner_candidates``."""
        if not 0.0 <= self.pair_threshold <= 1.0:
            raise ValueError(f"pair_threshold must be in [0, 1], got {self.pair_threshold}")
        cache = self.cache
        volume = cache.volume.cpu().numpy()
        index = cache.slice_index.cpu().numpy()
        count = cache.num_slices.cpu().numpy()
        items = cache.items.cpu().numpy()
        first = {}
        kept: dict[int, list[int]] = {}
        for n in range(len(cache)):
            first.setdefault(int(volume[n]), n - int(index[n]))
        for n in items:
            kept.setdefault(int(volume[n]), []).append(int(index[n]))
        max_offsets = {v: max_slice_offset(self.pair_threshold, int(count[first[v]])) for v in kept}
        lists = []
        for n in items:
            v = int(volume[n])
            cands = partner_candidates(int(index[n]), np.asarray(kept[v]), max_offsets[v])
            lists.append(first[v] + cands)
        width = max(len(c) for c in lists)
        table = np.zeros((len(lists), width), dtype=np.int64)
        for i, c in enumerate(lists):
            table[i, : len(c)] = c
        self._partners = torch.as_tensor(table, device=cache.offset.device)
        self._partner_counts = torch.as_tensor([len(c) for c in lists], device=cache.offset.device)
        message = sparse_volume_message(
            [np.asarray(kept[v]) for v in sorted(kept)], [max_offsets[v] for v in sorted(kept)], self.pair_threshold
        )
        if message:
            import warnings

            warnings.warn(f"SliceBatchLoader {message}", stacklevel=3)

    def _partner(self, items: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        counts = self._partner_counts[items]
        u = torch.rand(items.shape, device=items.device, generator=generator)
        pick = torch.floor(u * counts.to(u.dtype)).long().minimum(counts - 1)
        return self._partners[items, pick]

    def _augment(self, slices: torch.Tensor, generator: torch.Generator, params: dict | None = None):
        cache = self.cache
        size = torch.stack([cache.height[slices], cache.width[slices]], dim=1)
        buffers = [cache.buffers[cache.image_key]]
        labels = [False]
        if self.has_label and self.mode == "single":
            buffers.append(cache.buffers[cache.label_key])
            labels.append(True)
        if params is None:
            params = self.augmentation.sample(size, generator)
        return (
            self.augmentation(buffers, cache.offset[slices], size, params=params, labels=labels, device=self.device),
            params,
        )

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        cache = self.cache
        where = cache.offset.device
        epoch = self.start_pass()
        g_aug = self.generator(where, epoch, stream=1)
        for batch in self.batches(epoch):
            items = cache.items[batch.to(where)]
            out: dict[str, torch.Tensor] = {}
            if self.mode == "single":
                tensors, _ = self._augment(items, g_aug)
                out["image"] = tensors[0]
                if self.has_label:
                    out["label"] = tensors[1]
            elif self.mode == "two_views":
                (views,), _ = self._augment(torch.cat([items, items]), g_aug)
                out["image"], out["image_2"] = views.chunk(2)
            else:
                partners = self._partner(batch.to(where), g_aug)
                both = torch.cat([items, partners])
                params = None
                if self.shared_augmentation:
                    size = torch.stack([cache.height[items], cache.width[items]], dim=1)
                    one = self.augmentation.sample(size, g_aug)
                    params = {k: torch.cat([v, v]) for k, v in one.items()}
                (views,), _ = self._augment(both, g_aug, params)
                out["image"], out["image_2"] = views.chunk(2)
                out["position_2"] = cache.position[partners].to(self.device)
                out["slice_index"] = cache.slice_index[items].to(self.device)
                out["slice_index_2"] = cache.slice_index[partners].to(self.device)
            out["position"] = cache.position[items].to(self.device)
            yield out


class PatchBatchLoader(EpochBatches):
    """Batches of 3D patches (CRLN's weak view) from a :class:`~volssl.data.tensor_cache.VolumeTensorCache`, on the
    device: ``image`` (B, C, h, w, d) float32 and, when the cache has labels, ``label`` (B, 1, h, w, d) int64.

    Args:
        cache: the cached volumes.
        sampler: the batched rot90 / flip / crop (:class:`~volssl.data.batch_augment.BatchPatchSampler3d`).
        batch_size, iterations_per_epoch, drop_last, seed, rank, world_size: see :class:`EpochBatches`.
        stream: tells the labelled and the unlabelled loader of one run apart (their draws differ).
        device: the training device (default: the cache's).
    """

    def __init__(
        self,
        cache: VolumeTensorCache,
        sampler: BatchPatchSampler3d,
        batch_size: int,
        iterations_per_epoch: int | None = None,
        drop_last: bool = True,
        seed: int = 0,
        stream: int = 0,
        device: torch.device | str | None = None,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        super().__init__(len(cache), batch_size, iterations_per_epoch, drop_last, seed * 31 + stream, rank, world_size)
        self.cache, self.sampler = cache, sampler
        self.device = torch.device(device) if device is not None else cache.device
        self.has_label = cache.label_key in cache.buffers

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        cache = self.cache
        where = cache.offset.device
        epoch = self.start_pass()
        g_aug = self.generator(where, epoch, stream=1)
        keys = [cache.image_key] + ([cache.label_key] if self.has_label else [])
        for batch in self.batches(epoch):
            volumes = batch.to(where)
            shape = cache.shape[volumes]
            params = self.sampler.sample(shape, g_aug)
            patches = self.sampler([cache.buffers[k] for k in keys], cache.offset[volumes], shape, params=params)
            out = {cache.image_key: patches[0].to(self.device, non_blocking=True).float()}
            if self.has_label:
                out[cache.label_key] = patches[1].to(self.device, non_blocking=True).long()
            yield out
