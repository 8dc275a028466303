"""The app's DICOMweb datastore: MONAI Label's, storing labels and segmentations in the PACS as DICOM SEG objects
that carry the served bundles' class names, and telling an automatic segmentation from an annotator's label.

MONAI Label 0.8.5's ``DICOMWebDatastore`` counts every SEG that references a series as that series' label, writes
SEGs with dcmqi's ``itkimage2segimage`` (downloaded from GitHub at start-up when absent: no network here) and names
the segments "unknown" unless the viewer sends names. This datastore:

- writes the SEG with pydicom-seg (in MONAI Label's environment already), one segment per class present, named as
  the bundle's ``metadata.json`` names its classes;
- stores the result of ``/infer`` on a PACS series back in the PACS as a SEG whose series description ends with
  ``(automatic, not reviewed)``, and a label the annotator submits (tag ``final``) as a SEG described as the final
  label; only the latter are labels: ``get_labeled_images`` and training ignore the automatic ones, so a series that
  was only segmented automatically stays in CRLN's unlabelled pool.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path

from dicomweb_client import DICOMwebClient
from monailabel.datastore.dicom import DICOMwebClientX, DICOMWebDatastore
from monailabel.datastore.local import LocalDatastore
from monailabel.datastore.utils.convert import binary_to_image
from monailabel.datastore.utils.dicom import dicom_web_upload_dcm
from monailabel.interfaces.datastore import DefaultLabelTag

logger = logging.getLogger(__name__)

AUTOMATIC_MARK = "(automatic, not reviewed)"
FINAL_MARK = "(final label)"
SERIES_DESCRIPTION = "0008103E"
# a SEG's segments: SNOMED CT "Anatomical Structure" / "Tissue" (the structures' names are the segment labels)
CATEGORY = {"CodeValue": "91723000", "CodingSchemeDesignator": "SCT", "CodeMeaning": "Anatomical Structure"}
TYPE = {"CodeValue": "85756007", "CodingSchemeDesignator": "SCT", "CodeMeaning": "Tissue"}


def is_automatic(series_json: dict) -> bool:
    """Whether a QIDO-RS series result is an automatic segmentation stored by this app (not a label)."""
    values = series_json.get(SERIES_DESCRIPTION, {}).get("Value") or [""]
    return str(values[0]).endswith(AUTOMATIC_MARK)


class LabelAwareDICOMwebClient(DICOMwebClientX):
    """MONAI Label's DICOMweb client whose SEG searches leave out the automatic segmentations (the datastore asks
    ``search_for_series(Modality=SEG)`` for its labels)."""

    def search_for_series(self, *args, **kwargs):
        found = super().search_for_series(*args, **kwargs)
        filters = kwargs.get("search_filters") or {}
        if str(filters.get("Modality", "")).upper() == "SEG":
            found = [s for s in found if not is_automatic(s)]
        return found


def write_seg(series_dir, label_file, names: dict[int, str], description: str, algorithm: str,
              automatic: bool) -> str | None:
    """A DICOM SEG of ``label_file`` (a label map on the series' grid) onto the series in ``series_dir``, with one
    segment per class present, named from ``names``; ``None`` when the label map is empty (a SEG needs a segment).
    """
    import numpy as np
    import pydicom
    import pydicom_seg
    import SimpleITK as sitk

    mask = sitk.Cast(sitk.ReadImage(str(label_file)), sitk.sitkUInt16)
    present = sorted(int(v) for v in np.unique(sitk.GetArrayViewFromImage(mask)) if v != 0)
    if not present:
        return None
    attributes = [{
        "labelID": index,
        "SegmentLabel": names.get(index, f"class {index}"),
        "SegmentDescription": names.get(index, f"class {index}"),
        "SegmentAlgorithmType": "AUTOMATIC" if automatic else "SEMIAUTOMATIC",
        "SegmentAlgorithmName": algorithm,
        "SegmentedPropertyCategoryCodeSequence": CATEGORY,
        "SegmentedPropertyTypeCodeSequence": TYPE,
    } for index in present]
    template = pydicom_seg.template.from_dcmqi_metainfo({
        "ContentCreatorName": "volssl^monailabel",
        "SeriesDescription": description[:64],
        "SeriesNumber": str(int(time.time()) % 2_000_000_000),  # later SEGs sort after earlier ones
        "InstanceNumber": "1",
        "segmentAttributes": [attributes],
        "ContentLabel": "SEGMENTATION",
        "ContentDescription": description[:64],
        "ClinicalTrialSeriesID": "volssl",
        "ClinicalTrialTimePointID": "1",
        "ClinicalTrialCoordinatingCenterName": "volssl",
        "BodyPartExamined": "",
    })
    writer = pydicom_seg.MultiClassWriter(template=template, inplane_cropping=False, skip_empty_slices=False,
                                          skip_missing_segment=False)
    sources = [pydicom.dcmread(str(f), stop_before_pixels=True) for f in sorted(Path(series_dir).iterdir())
               if f.is_file()]
    handle, output = tempfile.mkstemp(suffix=".dcm")
    os.close(handle)
    writer.write(mask, sources).save_as(output)
    return output


class VolsslDICOMWebDatastore(DICOMWebDatastore):
    """MONAI Label's DICOMweb datastore with the SEG handling of the module docstring.

    Args:
        class_names: ``{model name: {class index: name}}`` of the served bundles; a SEG takes the names of the
            model that made the segmentation, or of the first bundle for a label whose request names no model.
        kwargs: ``DICOMWebDatastore``'s.
    """

    def __init__(self, client: DICOMwebClient, class_names: dict[str, dict[int, str]], **kwargs) -> None:
        super().__init__(client=client, **kwargs)
        self.class_names = class_names

    def _names_for(self, label_info: dict) -> tuple[str, dict[int, str]]:
        model = str(label_info.get("model") or "")
        if model in self.class_names:
            return model, self.class_names[model]
        first = next(iter(self.class_names), "volssl")
        return first, self.class_names.get(first, {})

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict, label_id: str = ""):
        logger.info(f"save label of series {image_id} (tag {label_tag}) from {label_filename}")
        self.get_image_uri(image_id)  # the series in the local cache (downloaded when needed)
        converted = ""
        if label_filename.endswith(".bin"):
            converted = binary_to_image(self.get_image_uri(image_id), label_filename)
            label_filename = converted
        final = label_tag == DefaultLabelTag.FINAL
        model, names = self._names_for(label_info)
        description = f"annotation {FINAL_MARK}" if final else f"{model} {AUTOMATIC_MARK}"
        image_dir = os.path.realpath(os.path.join(self._datastore.image_path(), image_id))
        seg = write_seg(image_dir, label_filename, names, description, model, automatic=not final)
        if seg is None:
            logger.warning(f"the label map for series {image_id} is empty: no SEG stored in the PACS")
        else:
            seg_series = dicom_web_upload_dcm(seg, self._client)
            os.unlink(seg)
            label_info = {**label_info, "SeriesInstanceUID": seg_series}
            logger.info(f"stored {'the label' if final else 'the automatic segmentation'} of series {image_id} in "
                        f"the PACS as DICOM SEG series {seg_series} ({description})")
        label_id = LocalDatastore.save_label(self, image_id, label_filename, label_tag, label_info)
        if converted:
            os.unlink(converted)
        return label_id


def make_datastore(studies: str, class_names: dict[str, dict[int, str]], settings) -> VolsslDICOMWebDatastore:
    """The datastore for ``--studies <DICOMweb URL>``, from MONAI Label's settings (as its app would build it, without
    the dcmqi download)."""
    session = None
    if settings.MONAI_LABEL_DICOMWEB_USERNAME and settings.MONAI_LABEL_DICOMWEB_PASSWORD:
        from dicomweb_client.session_utils import create_session_from_user_pass

        session = create_session_from_user_pass(settings.MONAI_LABEL_DICOMWEB_USERNAME,
                                                settings.MONAI_LABEL_DICOMWEB_PASSWORD)
    client = LabelAwareDICOMwebClient(url=studies, session=session, qido_url_prefix=settings.MONAI_LABEL_QIDO_PREFIX,
                                      wado_url_prefix=settings.MONAI_LABEL_WADO_PREFIX,
                                      stow_url_prefix=settings.MONAI_LABEL_STOW_PREFIX)
    cache_path = (settings.MONAI_LABEL_DICOMWEB_CACHE_PATH or "").strip()
    return VolsslDICOMWebDatastore(
        client=client,
        class_names=class_names,
        search_filter=settings.MONAI_LABEL_DICOMWEB_SEARCH_FILTER,
        cache_path=cache_path or None,
        fetch_by_frame=settings.MONAI_LABEL_DICOMWEB_FETCH_BY_FRAME,
        convert_to_nifti=settings.MONAI_LABEL_DICOMWEB_CONVERT_TO_NIFTI,
    )
