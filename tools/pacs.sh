#!/usr/bin/env bash
# A throwaway PACS for MONAI Label: Orthanc + its DICOMweb plugin from the system packages, on 127.0.0.1.
#
#   bash tools/pacs.sh start [--port 8042]   # prints the DICOMweb URL: http://127.0.0.1:8042/dicom-web
#   bash tools/pacs.sh load DIR              # upload a folder of DICOM files (STOW-RS)
#   bash tools/pacs.sh status                # what the PACS holds
#   bash tools/pacs.sh stop                  # stop it and delete its storage
#
# Needs `apt-get install -y orthanc orthanc-dicomweb` and the project's environment (.venv, VOLSSL_VENV moves it).
# See tools/pacs.py and the README, "MONAI Label with a PACS".
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VOLSSL_VENV:-$root/.venv}"
if [ ! -x "$venv/bin/python" ]; then
    echo "[pacs] no project environment at $venv: run 'bash tools/quickstart.sh --install-only' first" >&2
    exit 1
fi
exec "$venv/bin/python" "$root/tools/pacs.py" "$@"
