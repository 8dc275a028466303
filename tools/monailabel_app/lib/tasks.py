"""MONAI Label 0.8.5 infer and train tasks for the volssl bundles (thin subclasses of its bundle tasks).

What they add to ``BundleInferTask`` / ``BundleTrainTask``:

- each bundle runs with its own vendored ``volssl`` (``use_bundle_package``);
- training: a semi-supervised bundle (one whose train.json has ``unlabeled#data``, i.e. CRLN) gets the datastore's
  images that have no final label as its unlabelled pool; the log says how many labelled, validation and unlabelled
  images the run used;
- fewer than 3 labels still update ``models/model.pt`` (MONAI Label's 20 % validation split would hold out none);
  a repeated train request starts a new run from the current ``models/model.pt`` because the bundle never resumes
  a finished run (``volssl.engines.ResumeFromLatest``; an interrupted run is resumed);
- ``pretrained: false`` trains from the shipped pretrained encoder (``models/pretrain.pt``) or from scratch, instead
  of failing in MONAI Label 0.8.5 (``os.path.exists(None)``).
"""

from __future__ import annotations

import logging
import os
import sys

from monailabel.tasks.infer.bundle import BundleInferTask
from monailabel.tasks.train.bundle import BundleTrainTask

from lib.volssl_bundles import (
    config_id_exists,
    semi_supervised_pool,
    use_bundle_package,
    validation_split,
)

logger = logging.getLogger(__name__)

UNLABELED_ID = "unlabeled#data"


class _BundlePath:
    """Context: the bundle folder first on ``sys.path`` and its own ``volssl`` importable."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __enter__(self):
        sys.path.insert(0, self.path)
        use_bundle_package(self.path)
        return self

    def __exit__(self, *exc):
        if self.path in sys.path:
            sys.path.remove(self.path)
        return False


class VolsslBundleInferTask(BundleInferTask):
    """``BundleInferTask`` that parses each bundle with its own vendored ``volssl``."""

    def __init__(self, path: str, conf: dict, **kwargs) -> None:
        with _BundlePath(path):
            super().__init__(path, conf, **kwargs)

    def pre_transforms(self, data=None):
        with _BundlePath(self.bundle_path):
            return super().pre_transforms(data)

    def inferer(self, data=None):
        with _BundlePath(self.bundle_path):
            return super().inferer(data)

    def post_transforms(self, data=None):
        with _BundlePath(self.bundle_path):
            return super().post_transforms(data)

    def _get_network(self, device, data):
        with _BundlePath(self.bundle_path):
            return super()._get_network(device, data)


class VolsslBundleTrainTask(BundleTrainTask):
    """``BundleTrainTask`` with the datastore's unlabelled pool, new runs on repeated requests and clear counts."""

    def __init__(self, path: str, conf: dict, **kwargs) -> None:
        with _BundlePath(path):
            super().__init__(path, conf, **kwargs)
        self._request: dict = {}
        self._unlabelled_images: list[str] = []
        self._labelled: list[dict] = []

    @property
    def semi_supervised(self) -> bool:
        return self.valid and config_id_exists(self.bundle_config.config, UNLABELED_ID)

    def __call__(self, request, datastore):
        self._request = dict(request)
        with _BundlePath(self.bundle_path):
            return super().__call__(request, datastore)

    def _fetch_datalist(self, request, datastore):
        self._labelled = super()._fetch_datalist(request, datastore)
        uris = (datastore.get_image_uri(i) for i in sorted(datastore.get_unlabeled_images()))
        self._unlabelled_images = [os.path.realpath(u) for u in uris if u and os.path.exists(u)]
        return self._labelled

    def _partition_datalist(self, datalist, request, shuffle=False):
        train, val = super()._partition_datalist(datalist, request, shuffle=shuffle)
        train, val, note = validation_split(train, val)
        if note:
            logger.info(f"{note} ({len(train)} images)")
        return train, val

    def _load_checkpoint(self, model_pytorch, pretrained, train_handlers):
        if not pretrained or not os.path.exists(model_pytorch):
            # MONAI Label 0.8.5 calls os.path.exists(None) here when pretrained is false
            logger.info(f"not loading {model_pytorch}: training from the bundle's initial weights")
            return
        super()._load_checkpoint(model_pytorch, pretrained, train_handlers)

    def _update_overrides(self, overrides):
        request = self._request
        config = self.bundle_config
        train = overrides.get(self.const.key_train_dataset_data(), [])
        val = overrides.get(self.const.key_validate_dataset_data())
        model_pt = os.path.join(self.bundle_path, "models", self.const.model_pytorch())
        from_model = request.get("pretrained", True) and os.path.exists(model_pt)

        # the pretrained encoder is read when the network is built; model.pt, when loaded, replaces it at the start
        start = f"from {model_pt}" if from_model else "from the bundle's initial weights"
        if config.get("load_pretrain", False):
            pretrained_ckpt = self._resolve("pretrained_ckpt")
            if pretrained_ckpt and not os.path.exists(pretrained_ckpt):
                overrides["load_pretrain"] = False
                logger.warning(f"{pretrained_ckpt} is missing: the encoder starts from its initial weights")
            elif pretrained_ckpt and not from_model:
                start = f"from the pretrained encoder {pretrained_ckpt} (decoder: initial weights)"

        if self.semi_supervised and config.get("mode", "") != "supervised":
            pool, source = semi_supervised_pool(train, self._unlabelled_images)
            overrides[UNLABELED_ID] = pool
            logger.info(
                f"semi-supervised training {start}: {len(train)} labelled, {len(val or [])} validation, "
                f"{len(pool)} unlabelled images ({source})"
            )
        else:
            logger.info(f"supervised training {start}: {len(train)} labelled, {len(val or [])} validation images")
        return overrides

    def _resolve(self, config_id: str):
        """A path-like config value with ``bundle_root`` set to the served bundle (None when absent)."""
        if config_id not in self.bundle_config:
            return None
        try:
            return str(self.bundle_config.get_parsed_content(config_id, instantiate=False))
        except Exception as error:  # noqa: BLE001 - a value that needs the full run is simply not checked here
            logger.debug(f"{config_id} not resolved ahead of the run: {error}")
            return None
