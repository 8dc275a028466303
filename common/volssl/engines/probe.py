"""An Ignite handler that measures the pretraining encoder's slice embeddings every few epochs (collapse, position).

Pretraining losses can fall while the encoder learns nothing useful (SAL's local alignment collapses to a constant
embedding; a contrastive loss can plateau). :class:`EmbeddingProbe` makes that visible while it happens: before the
first epoch and every ``interval`` epochs it computes the diagnostics of :mod:`volssl.metrics.embeddings`
(``position_r2``, ``nn_position_error``, ``cosine_mean``, ``channel_std``) on a fixed small set of volumes, and logs
them to TensorBoard, to the pretraining curve CSV (through :meth:`volssl.engines.LearningCurveWriter.record`, columns
``probe_*``) and to the console.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

import torch
from ignite.engine import Engine, Events
from torch import nn

from ..metrics.embeddings import DIAGNOSTIC_KEYS, embedding_diagnostics, load_probe_slices, pooled_features

__all__ = ["EmbeddingProbe", "probe_volumes"]


def probe_volumes(datalist, roles: Sequence[str] = ("validation",), dataset_dir=None) -> list[dict]:
    """The images of ``roles`` as ``[{"image": path}, ...]`` for :class:`EmbeddingProbe`; unlike
    :func:`volssl.data.load_images`, a datalist without a case in these roles gives ``[]`` (the probe then warns and
    stays off) instead of an error: monitoring must never stop a pretraining."""
    from ..data.datalist import IMAGE_KEY, load_datalist, resolve_role

    content = load_datalist(datalist, require=())
    return [{IMAGE_KEY: e[IMAGE_KEY]} for role in roles for e in resolve_role(content, role, dataset_dir)]


def _rank() -> int:
    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


class EmbeddingProbe:
    """Log the embedding diagnostics of the pretraining network's encoder before training and every ``interval``
    epochs (and after the last epoch).

    The probe set is every slice of the first ``max_volumes`` volumes of ``data``, preprocessed with
    ``volume_transform`` and centre-cropped to ``patch_size`` (:func:`volssl.metrics.embeddings.load_probe_slices`),
    loaded once, on first use. The features are the globally average-pooled level-``level`` maps of
    ``network.encoder`` (a ``DistributedDataParallel`` wrapper is looked through) in eval mode; the network goes back
    to its previous mode afterwards. Under ``torch.distributed`` only rank 0 computes and logs.

    Values: ``engine.state.metrics["probe_<name>"]``, TensorBoard scalars ``<tag>/<name>`` in ``log_dir`` (when
    given), the ``probe_<name>`` columns of ``curve_writer``'s CSV (when given; the row of epoch 0 holds the value
    before training) and one log line. A resumed run does not probe at its start again.

    Args:
        network: the pretraining network; it must have an ``encoder`` attribute returning the level features
            (:class:`~volssl.networks.PretrainNet2d`, :class:`~volssl.networks.SalPretrainNet2d`).
        data: the probe volumes' entries, e.g. ``volssl.data.load_images(datalist, ["validation"])``; at least two
            volumes (the position regression is fitted on half of them and scored on the other half).
        volume_transform: the per-volume preprocessing (the pretraining's).
        patch_size: centre crop of every slice (the pretraining patch); ``None``: whole slices of equal size.
        slice_axis: the spatial slice axis.
        interval: probe every this many epochs; 0 disables the handler.
        max_volumes: the number of probe volumes (the first ones of ``data``).
        level: the encoder level pooled (-1: the bottleneck, the features the fine-tuning decoder starts from).
        batch_size: slices per forward pass.
        log_dir: TensorBoard folder (``None``: no TensorBoard).
        curve_writer: a :class:`~volssl.engines.LearningCurveWriter` whose CSV gets the ``probe_*`` columns.
        tag: TensorBoard tag prefix.

    With fewer than two probe volumes the handler logs a warning and does nothing.

    Raises:
        ValueError: ``interval < 0``.
    """

    def __init__(
        self,
        network: nn.Module,
        data: Sequence[Mapping],
        volume_transform: Callable | None,
        patch_size: Sequence[int] | int | None,
        slice_axis: int = -1,
        interval: int = 1,
        max_volumes: int = 8,
        level: int = -1,
        batch_size: int = 64,
        log_dir=None,
        curve_writer=None,
        tag: str = "probe",
    ) -> None:
        if int(interval) < 0:
            raise ValueError(f"interval must be >= 0 (0 disables the probe), got {interval}")
        self.network = network
        self.data = list(data)[: max(2, int(max_volumes))]
        self.volume_transform = volume_transform
        self.patch_size = patch_size
        self.slice_axis = slice_axis
        self.interval = int(interval)
        self.level = int(level)
        self.batch_size = int(batch_size)
        self.log_dir = log_dir
        self.curve_writer = curve_writer
        self.tag = tag
        self.logger = logging.getLogger("volssl.probe")
        if self.interval > 0 and len(self.data) < 2:
            # a datalist with a single validation volume must not stop pretraining: monitor nothing, say so
            self.logger.warning(
                f"embedding probe disabled: it needs at least two volumes, got {len(self.data)} (add volumes to the "
                "probe role, e.g. --probe_roles \"['validation', 'unlabeled']\", or set --probe_interval 0)"
            )
            self.interval = 0
        self._probe: dict | None = None
        self._writer = None
        self._last_epoch: int | None = None

    def attach(self, engine: Engine) -> None:
        if self.interval == 0:
            return
        # at EPOCH_STARTED, not STARTED: a resumed run loads its checkpoint at STARTED, possibly after this handler
        engine.add_event_handler(Events.EPOCH_STARTED, self._at_start)
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)
        engine.add_event_handler(Events.COMPLETED, self._at_end)

    def _at_start(self, engine: Engine) -> None:
        # the first epoch of a fresh run (its counter is already 1): the value before any training step, as epoch 0; a
        # resumed run starts at a later epoch and has logged it already
        if engine.state.epoch == 1 and engine.state.iteration == 0:
            self(engine, epoch=0)

    def _at_end(self, engine: Engine) -> None:
        if self._last_epoch != engine.state.epoch:
            self(engine)

    def _encoder(self) -> nn.Module:
        net = getattr(self.network, "module", self.network)
        if not hasattr(net, "encoder"):
            raise AttributeError(f"{type(net).__name__} has no `encoder` to probe")
        return net.encoder

    def probe_set(self) -> dict:
        """The probe slices (loaded on first use): see :func:`volssl.metrics.embeddings.load_probe_slices`."""
        if self._probe is None:
            self._probe = load_probe_slices(self.data, self.volume_transform, self.patch_size, self.slice_axis)
        return self._probe

    def compute(self) -> dict[str, float]:
        """The four diagnostics of the encoder as it is now."""
        probe = self.probe_set()
        features = pooled_features(self._encoder(), probe["images"], self.level, self.batch_size)
        return embedding_diagnostics(features, probe["positions"], probe["volumes"])

    def __call__(self, engine: Engine, epoch: int | None = None) -> None:
        epoch = int(engine.state.epoch if epoch is None else epoch)
        self._last_epoch = epoch
        if _rank() > 0:
            return
        values = self.compute()
        for name in DIAGNOSTIC_KEYS:
            engine.state.metrics[f"{self.tag}_{name}"] = values[name]
        if self.log_dir is not None:
            if self._writer is None:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(log_dir=str(self.log_dir))
            for name in DIAGNOSTIC_KEYS:
                self._writer.add_scalar(f"{self.tag}/{name}", values[name], epoch)
            self._writer.flush()
        if self.curve_writer is not None:
            self.curve_writer.record(epoch, {f"{self.tag}_{k}": values[k] for k in DIAGNOSTIC_KEYS})
        summary = ", ".join(f"{k} {values[k]:.4f}" for k in DIAGNOSTIC_KEYS)
        self.logger.info(f"epoch {epoch} embedding probe: {summary}")
