"""What the bundle configs call at their boundary with the user: required files with a hint on what to do, a
readable last line for input errors, and the training record that makes a run's weights exportable.

- :func:`require_file`: a file the run cannot do without, or a :class:`~volssl.io.VolsslInputError` saying what to do.
- :func:`install_error_hook`: on the command line, a run stopped by bad input ends with that one-line message.
- :class:`InferenceInputs`: every inference input (NIfTI files, DICOM series folders) checked before the network
  runs; bad ones skipped and reported, out-of-distribution ones warned about. :class:`SaveSegmentationd`: label maps
  written atomically as NIfTI or DICOM SEG, paths logged.
- :func:`write_training_record` / :func:`read_training_record`: ``models/training_record.json``, the values the
  weights were trained with (network, preprocessing), the label names and the training data's statistics, read by
  ``tools/export_bundle.py`` to fold them into the exported configs; :func:`apply_recorded_values`: the tools that
  take a run folder build its network from that record, not from repeated overlays.
"""

from .errors import install_error_hook, require_file
from .inputs import InferenceInputs, check_image, check_input, distribution_warnings
from .outputs import SaveSegmentationd, label_names
from .record import RECORD_NAME, apply_recorded_values, read_training_record, training_data_stats, write_training_record

__all__ = [
    "RECORD_NAME",
    "InferenceInputs",
    "SaveSegmentationd",
    "apply_recorded_values",
    "check_image",
    "check_input",
    "distribution_warnings",
    "install_error_hook",
    "label_names",
    "read_training_record",
    "require_file",
    "training_data_stats",
    "write_training_record",
]
