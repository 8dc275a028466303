#!/usr/bin/env bash
# Serve and retrain the volssl bundles with MONAI Label 0.8.5.
#
#   bash tools/monailabel.sh setup
#       creates the MONAI Label environment (.venv-monailabel at the repository root; VOLSSL_MONAILABEL_VENV
#       overrides the location). No volssl install: exported bundles carry their own copy of the package.
#   bash tools/monailabel.sh serve --studies DIR [--port 8000] [--app_dir DIR] [--replace] BUNDLE [BUNDLE ...]
#       each BUNDLE an exported zip (<name>_v<version>.zip) or a bundle folder; lays out the app (our app code and
#       the bundles in its model/ folder) and runs `monailabel start_server` on 127.0.0.1 in the foreground.
#       DIR is a folder of NIfTI images or a DICOMweb URL (a PACS, e.g. http://127.0.0.1:8042/dicom-web from
#       `bash tools/pacs.sh start`): labels and segmentations then go back to the PACS as DICOM SEG.
#       The served bundles are copies: retraining changes the app's copy, never BUNDLE; a later `serve` keeps the
#       retrained copy unless --replace is given. See the README, "Use with MONAI Label".
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VOLSSL_MONAILABEL_VENV:-$root/.venv-monailabel}"
python="${PYTHON:-python3}"

usage() {
    sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    exit "${1:-2}"
}

setup() {
    local start=$SECONDS
    if [ ! -x "$venv/bin/python" ]; then
        echo "[monailabel] creating the virtual environment $venv"
        "$python" -m venv "$venv"
    fi
    local pip=("$venv/bin/python" -m pip install --quiet)
    "${pip[@]}" --upgrade pip
    # torch first and alone, in the project's range: on this kind of CPU-only machine pip takes the local CPU
    # wheel; on a machine without one (a GPU machine) it takes PyPI's CUDA build of the same range.
    echo "[monailabel] installing torch (>=2.8,<2.14)"
    "${pip[@]}" "torch>=2.8,<2.14"
    # torchvision only next to a CUDA torch: PyPI's torchvision is a CUDA build, and beside a CPU torch it fails
    # to import ("operator torchvision::nms does not exist"). The pair is the one torch's release notes name
    # (torch 2.N <-> torchvision 0.N+15). On a CPU torch the app stands in for the two functions MONAI Label
    # imports from torchvision.utils (see tools/monailabel_app/main.py).
    local torchvision
    torchvision="$("$venv/bin/python" -W ignore -c '
import torch
major, minor = (int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
print(f"torchvision==0.{minor + 15}.*" if torch.version.cuda and major == 2 else "")
')"
    if [ -n "$torchvision" ]; then
        echo "[monailabel] CUDA torch: installing $torchvision"
        "${pip[@]}" "$torchvision" "torch==$("$venv/bin/python" -c 'import torch; print(torch.__version__)')"
    else
        echo "[monailabel] CPU torch: no torchvision (the app covers what MONAI Label imports from it)"
    fi
    echo "[monailabel] installing MONAI Label's requirements (tools/monailabel_requirements.txt)"
    "${pip[@]}" -r "$root/tools/monailabel_requirements.txt"
    # --no-deps: its own requirement list would add sam2 and PyPI's torchvision (see the requirements file).
    "${pip[@]}" --no-deps "monailabel==0.8.5"
    # The same imports the server makes at start-up, with the app's torchvision stand-in where it applies.
    "$venv/bin/python" - "$root/tools/monailabel_app" <<'EOF'
import sys
sys.path.insert(0, sys.argv[1])
from lib.torchvision_fallback import provide_torchvision_utils_if_missing
provide_torchvision_utils_if_missing()
import monai, monailabel, torch
from monailabel.tasks.infer.bundle import BundleInferTask  # noqa: F401
from monailabel.tasks.train.bundle import BundleTrainTask  # noqa: F401
print(f"[monailabel] monailabel {monailabel.__version__}, monai {monai.__version__}, torch {torch.__version__}"
      f" ({'CUDA ' + torch.version.cuda if torch.version.cuda else 'CPU'})")
EOF
    echo "[monailabel] environment ready in $((SECONDS - start)) s: $venv ($(du -sh "$venv" | cut -f1))"
}

case "${1:-}" in
    setup)
        shift
        setup "$@"
        ;;
    serve)
        shift
        if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import monailabel" 2>/dev/null; then
            echo "[monailabel] no MONAI Label environment at $venv: run 'bash tools/monailabel.sh setup' first" >&2
            exit 1
        fi
        exec "$venv/bin/python" "$root/tools/monailabel_serve.py" --python "$venv/bin/python" "$@"
        ;;
    -h | --help | help)
        usage 0
        ;;
    *)
        usage
        ;;
esac
