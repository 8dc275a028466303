"""A throwaway Orthanc PACS with its DICOMweb plugin, for working with MONAI Label the way a hospital does.

:func:`start` runs the system's Orthanc (Debian packages ``orthanc`` and ``orthanc-dicomweb``) in the background with
a configuration of its own: a fresh storage folder under the system's temporary folder, HTTP only on the given port
(DICOM networking off), answering clients on this machine only (Orthanc has no option to bind its HTTP port to one
address, so ``RemoteAccessAllowed: false`` makes it refuse every client that is not 127.0.0.1), no authentication,
DICOMweb at ``/dicom-web``. :func:`stop` ends it and deletes the storage folder. The state (process id, port,
storage) is kept in ``<home>/state.json``, so the commands may run from different shells.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from .errors import VolsslInputError

__all__ = ["DICOMWEB_PLUGINS", "ORTHANC_BINARIES", "find_orthanc", "running", "start", "stop"]

ORTHANC_BINARIES = ("/usr/sbin/Orthanc", "/usr/bin/Orthanc", "/usr/local/bin/Orthanc")
DICOMWEB_PLUGINS = (
    "/usr/lib/orthanc/libOrthancDicomWeb.so",
    "/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
    "/usr/local/share/orthanc/plugins/libOrthancDicomWeb.so",
)
INSTALL_HINT = "install Orthanc and its DICOMweb plugin: apt-get install -y orthanc orthanc-dicomweb"
STATE = "state.json"


def find_orthanc() -> tuple[str, str]:
    """The Orthanc executable and its DICOMweb plugin (``VOLSSL_ORTHANC`` / ``VOLSSL_ORTHANC_DICOMWEB`` override).

    Raises:
        VolsslInputError: either is missing (the message says what to install).
    """
    binary = (
        os.environ.get("VOLSSL_ORTHANC")
        or shutil.which("Orthanc")
        or next((b for b in ORTHANC_BINARIES if Path(b).is_file()), None)
    )
    plugin = os.environ.get("VOLSSL_ORTHANC_DICOMWEB") or next((p for p in DICOMWEB_PLUGINS if Path(p).is_file()), None)
    if not binary or not Path(binary).is_file():
        raise VolsslInputError("Orthanc", f"not found: {INSTALL_HINT}")
    if not plugin or not Path(plugin).is_file():
        raise VolsslInputError("libOrthancDicomWeb.so", f"Orthanc's DICOMweb plugin not found: {INSTALL_HINT}")
    return binary, plugin


def _config(storage: Path, port: int, plugin: str) -> dict:
    return {
        "Name": "volssl-pacs",
        "StorageDirectory": str(storage / "db"),
        "IndexDirectory": str(storage / "db"),
        "HttpServerEnabled": True,
        "HttpPort": int(port),
        "RemoteAccessAllowed": False,  # only clients on this machine (127.0.0.1) get an answer
        "AuthenticationEnabled": False,
        "DicomServerEnabled": False,  # no DICOM port: DICOMweb over HTTP only
        "Plugins": [plugin],
        "DicomWeb": {
            "Enable": True,
            "Root": "/dicom-web/",
            "EnableWado": True,
            "WadoRoot": "/wado",
            "Host": f"127.0.0.1:{port}",
            "Ssl": False,
            "StudiesMetadata": "Full",
            "SeriesMetadata": "Full",
        },
        "StableAge": 2,
        "SaveJobs": False,
    }


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/system", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def running(home) -> dict | None:
    """The state of the PACS started from ``home`` when it still runs, else ``None``."""
    state_file = Path(home) / STATE
    if not state_file.is_file():
        return None
    state = json.loads(state_file.read_text())
    return state if _alive(int(state["pid"])) else None


def start(home, port: int = 8042, timeout: float = 60) -> dict:
    """Start a throwaway Orthanc (see the module docstring) unless one started from ``home`` runs; returns its state
    ``{"pid", "port", "storage", "url", "log"}`` (``url``: the DICOMweb root).

    Raises:
        VolsslInputError: Orthanc or its plugin missing, the port taken, or Orthanc not answering in ``timeout`` s
            (the message ends with its log).
    """
    home = Path(home)
    state = running(home)
    if state:
        return state
    binary, plugin = find_orthanc()
    if _answers(port):
        raise VolsslInputError(f"127.0.0.1:{port}", "another server answers on this port: stop it or pass --port")
    home.mkdir(parents=True, exist_ok=True)
    storage = Path(tempfile.mkdtemp(prefix="volssl-pacs-"))
    config = storage / "orthanc.json"
    config.write_text(json.dumps(_config(storage, port, plugin), indent=2))
    log = storage / "orthanc.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [binary, str(config)], stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=storage
        )
    state = {
        "pid": process.pid,
        "port": int(port),
        "storage": str(storage),
        "log": str(log),
        "url": f"http://127.0.0.1:{port}/dicom-web",
    }
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            break
        if _answers(port):
            (home / STATE).write_text(json.dumps(state, indent=2))
            return state
        time.sleep(0.5)
    tail = log.read_text(errors="replace")[-2000:]
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
    shutil.rmtree(storage, ignore_errors=True)
    raise VolsslInputError(binary, f"Orthanc did not start on port {port}; its log:\n{tail}")


def stop(home, timeout: float = 30) -> dict | None:
    """Stop the PACS started from ``home`` and delete its storage folder; returns the state it had (``None`` when
    none was running)."""
    home = Path(home)
    state_file = home / STATE
    if not state_file.is_file():
        return None
    state = json.loads(state_file.read_text())
    pid = int(state["pid"])
    if _alive(pid):
        os.killpg(pid, signal.SIGTERM)
        deadline = time.time() + timeout
        while _alive(pid) and time.time() < deadline:
            time.sleep(0.2)
        if _alive(pid):
            os.killpg(pid, signal.SIGKILL)
    shutil.rmtree(state["storage"], ignore_errors=True)
    state_file.unlink()
    return state
