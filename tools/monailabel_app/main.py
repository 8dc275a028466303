"""MONAI Label app serving the volssl bundles in its ``model/`` folder (laid out by ``tools/monailabel.sh serve``).

Like MONAI Label's ``monaibundle`` sample app, each bundle becomes one segmentation model (``/infer/<bundle>``) and one
trainer (``/train/<bundle>``); unlike it, the bundles come only from the local ``model/`` folder (no zoo download, no
network), each bundle runs with its own vendored ``volssl``, CRLN trains semi-supervised on the datastore's unlabelled
images, a repeated ``/train`` starts a new run from the current model, and a bundle that fails to load is reported
and skipped instead of stopping the server.

With ``--studies <DICOMweb URL>`` (a PACS, e.g. Orthanc from ``tools/pacs.sh``) the datastore is
``lib/dicomweb.py``'s: labels and, unless ``store_results`` is false, every ``/infer`` result on a PACS series are
stored in the PACS as DICOM SEG objects with the bundles' class names; only submitted labels count as labels.

Conf (``monailabel start_server --conf KEY VALUE``): ``models`` (comma-separated bundle folder names; default: all),
``skip_trainers`` (true: inference only), ``preload`` (true: load the networks at start-up), ``store_results``
(PACS only; default true: ``/infer`` on a series stores its result in the PACS, as a request's
``{"save_label": true}`` does).
"""

from __future__ import annotations

import logging
import os

# before anything imports monailabel.transform.post, which needs torchvision.utils (see lib/torchvision_fallback.py)
from lib.torchvision_fallback import provide_torchvision_utils_if_missing

provide_torchvision_utils_if_missing()

import monailabel
from lib.tasks import VolsslBundleInferTask, VolsslBundleTrainTask
from lib.volssl_bundles import find_bundles, label_names, read_metadata
from monailabel.config import settings
from monailabel.interfaces.app import MONAILabelApp
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random
from monailabel.utils.others.generic import strtobool

logger = logging.getLogger(__name__)


class VolsslBundlesApp(MONAILabelApp):
    def __init__(self, app_dir, studies, conf):
        self.model_dir = os.path.join(app_dir, "model")
        self.bundles = find_bundles(self.model_dir, conf.get("models"))
        if not self.bundles:
            raise FileNotFoundError(f"no bundle in {self.model_dir}: lay the app out with tools/monailabel.sh serve")
        logger.info(f"volssl bundles: {', '.join(f'{n} ({p})' for n, p in self.bundles.items())}")
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="volssl bundles",
            description="Label-efficient segmentation bundles (CORAL, SAL, CRLN) served from local bundle folders",
            version=monailabel.__version__,
        )

    def _init_dicomweb_datastore(self):
        from lib.dicomweb import make_datastore

        names = {name: {k: v for k, v in label_names(read_metadata(path)).items() if k != 0}
                 for name, path in self.bundles.items()}
        logger.info(f"PACS (DICOMweb) datastore: {self.studies}; SEG class names {names}")
        return make_datastore(self.studies, names, settings)

    def infer(self, request, datastore=None):
        """MONAI Label's ``infer``; on a PACS series the result is also stored in the PACS (``store_results``)."""
        from lib.dicomweb import VolsslDICOMWebDatastore

        store = strtobool(self.conf.get("store_results", "true"))
        image = request.get("image")
        if store and isinstance(self.datastore(), VolsslDICOMWebDatastore) and isinstance(image, str) \
                and not os.path.exists(image) and "save_label" not in request:
            request = {**request, "save_label": True}
        return super().infer(request, datastore)

    def init_infers(self):
        infers = {}
        for name, path in self.bundles.items():
            try:
                task = VolsslBundleInferTask(str(path), self.conf)
            except Exception:  # one broken bundle must not stop the others (or the server)
                logger.exception(f"bundle {name} ({path}) cannot be served: skipped")
                continue
            if task.is_valid():
                logger.info(f"+++ infer {name}: labels {task.labels}, {task.dimension}D")
                infers[name] = task
        return infers

    def init_trainers(self):
        trainers = {}
        if strtobool(self.conf.get("skip_trainers", "false")):
            return trainers
        for name, path in self.bundles.items():
            try:
                task = VolsslBundleTrainTask(str(path), self.conf)
            except Exception:
                logger.exception(f"bundle {name} ({path}) cannot be trained: skipped")
                continue
            if task.is_valid():
                kind = "semi-supervised (labelled + unlabelled images)" if task.semi_supervised else "supervised"
                logger.info(f"+++ train {name}: {kind}")
                trainers[name] = task
        return trainers

    def init_strategies(self):
        return {"random": Random(), "first": First()}
