"""A throwaway PACS on this machine: Orthanc with its DICOMweb plugin (``tools/pacs.sh`` runs this file).

    bash tools/pacs.sh start [--port 8042]   # Orthanc on 127.0.0.1:PORT, fresh storage; prints the DICOMweb URL
    bash tools/pacs.sh load DIR              # upload every DICOM file under DIR (STOW-RS)
    bash tools/pacs.sh status                # the URL and what the PACS holds
    bash tools/pacs.sh stop                  # stop Orthanc and delete its storage

Orthanc comes from the system packages (Debian: ``apt-get install -y orthanc orthanc-dicomweb``); the configuration is
this tool's own (``volssl.io.orthanc``): HTTP on the given port answering this machine only, no DICOM port, no
authentication, storage in a new temporary folder that ``stop`` deletes. ``VOLSSL_PACS_HOME`` (default
``runs/pacs``) keeps the state between the commands. Exit status: 0 done, 2 bad input or no Orthanc (one line
``error: <what>: <problem>``), 1 anything else.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

try:
    import cli
except ImportError:  # imported from elsewhere rather than run as `python tools/<tool>.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import cli
from volssl.io import VolsslInputError, orthanc
from volssl.io.dicom import dicom_case_folders, dicom_files
from volssl.io.dicomweb import search, store_files

HOME = Path(os.environ.get("VOLSSL_PACS_HOME", Path(__file__).resolve().parents[1] / "runs" / "pacs"))


def _state() -> dict:
    state = orthanc.running(HOME)
    if not state:
        raise VolsslInputError(HOME, "no PACS started from here is running: bash tools/pacs.sh start")
    return state


def start(port: int = 8042) -> None:
    """Start Orthanc (unless it runs already) and print its DICOMweb URL.

    Args:
        port: the HTTP port on 127.0.0.1.
    """
    already = orthanc.running(HOME)
    state = orthanc.start(HOME, port=port)
    print(f"[pacs] {'already running' if already else 'started'}: Orthanc pid {state['pid']}, storage "
          f"{state['storage']} (deleted by stop), log {state['log']}")
    print(f"[pacs] DICOMweb: {state['url']}")


def load(folder: str) -> None:
    """Upload every DICOM file under ``folder`` with STOW-RS.

    Args:
        folder: a folder of DICOM files (searched recursively).
    """
    state = _state()
    files = [f for case in dicom_case_folders(folder) for f in dicom_files(case)]
    if not files:
        raise VolsslInputError(folder, "no DICOM file in this folder or below it")
    count = store_files(state["url"], files)
    print(f"[pacs] stored {count} instance(s) from {Path(folder).resolve()} in {state['url']}")


def status() -> None:
    """Print the DICOMweb URL and the series the PACS holds."""
    state = _state()
    series = search(state["url"], "series")
    print(f"[pacs] {state['url']}: {len(series)} series")
    for item in series:
        values = {tag: (item.get(tag, {}).get("Value") or [""])[0] for tag in ("00080060", "0008103E", "0020000E")}
        print(f"  {values['00080060']:4s} {values['0020000E']}  {values['0008103E']}")


def stop() -> None:
    """Stop Orthanc and delete its storage folder."""
    state = orthanc.stop(HOME)
    print("[pacs] no PACS was running" if state is None else f"[pacs] stopped; deleted {state['storage']}")


if __name__ == "__main__":
    sys.exit(cli.run({"start": start, "load": load, "status": status, "stop": stop}, name="pacs.sh"))
