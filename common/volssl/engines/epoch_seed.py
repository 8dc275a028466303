"""Handing the trainer's epoch to the data sources, so that their draws follow the run (and its resumption)."""

from __future__ import annotations

from ignite.engine import Engine, Events

__all__ = ["EpochSeed"]


class EpochSeed:
    """At every ``EPOCH_STARTED``, ``set_epoch(engine.state.epoch)`` on each loader that has it (the batched loaders
    of :mod:`volssl.data.batch_loaders`) or on its sampler (a ``DataLoader`` with a ``DistributedSampler``); loaders
    with neither (a ``DataLoader`` with a plain sampler) are left alone.

    A run resumed from the checkpoint of epoch ``e`` starts epoch ``e + 1`` with the same draws as an uninterrupted
    run, because each epoch's batched draws are seeded by ``(seed, epoch)``.

    Args:
        loaders: the data source of the run, or a list of them (``None`` entries are skipped: a disabled config
            item).
    """

    def __init__(self, loaders) -> None:
        loaders = list(loaders) if isinstance(loaders, (list, tuple)) else [loaders]
        self.loaders = [loader for loader in loaders if loader is not None]

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        for loader in self.loaders:
            target = loader if hasattr(loader, "set_epoch") else getattr(loader, "sampler", None)
            if hasattr(target, "set_epoch"):
                target.set_epoch(engine.state.epoch)
