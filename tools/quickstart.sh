#!/usr/bin/env bash
# Set up volssl on a fresh machine and run the main job on the default (synthetic phantom) data.
#
#   bash tools/quickstart.sh                 # venv + install + main job (CORAL on the phantom data)
#   bash tools/quickstart.sh --method sal    # any argument is passed on to tools/run_main.py
#   bash tools/quickstart.sh --install-only  # venv + install, nothing else (what CI does before the tests)
#
# The virtual environment is .venv at the repository root; VOLSSL_VENV overrides the location.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VOLSSL_VENV:-$root/.venv}"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
    echo "[volssl] creating the virtual environment $venv"
    "$python" -m venv "$venv"
fi
# the package is installed editable, so only a change of the requirements or of pyproject.toml needs a reinstall
stamp="$venv/.volssl-install-stamp"
wanted="$(cat "$root/requirements.txt" "$root/requirements-dev.txt" "$root/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ] && "$venv/bin/python" -c "import volssl" 2>/dev/null; then
    echo "[volssl] requirements unchanged since the last install: skipping pip (delete $stamp to force it)"
else
    echo "[volssl] installing requirements (torch stays within >=2.8,<2.14: the CPU wheel where no GPU build is asked for)"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    "$venv/bin/python" -m pip install --quiet -r "$root/requirements-dev.txt"
    "$venv/bin/python" -m pip install --quiet --no-deps -e "$root"
    echo "$wanted" > "$stamp"
fi

if [ "${1:-}" = "--install-only" ]; then
    echo "[volssl] installed into $venv"
    exit 0
fi
cd "$root"
exec "$venv/bin/python" tools/run_main.py "$@"
