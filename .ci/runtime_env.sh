#!/usr/bin/env bash
# CI job: the runtime requirements alone are enough for the main job. A fresh virtual environment gets
# requirements.txt (not requirements-dev.txt) and volssl itself, then tools/run_main.py runs the CORAL bundle on a
# few phantoms through its signed export and the zip is verified against the signing key. pip's cache is reused
# (no --no-cache-dir); torch stays within requirements.txt's >=2.8,<2.14, so the CPU wheel is the one picked.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"
work="$(mktemp -d -t volssl_runtime_env.XXXXXX)"
trap 'rm -rf "$work"' EXIT
start=$(date +%s)
"$python" -m venv "$work/venv"
venv_python="$work/venv/bin/python"
"$venv_python" -m pip install --quiet -r "$root/requirements.txt"
"$venv_python" -m pip install --quiet --no-deps -e "$root"
if "$venv_python" -m pip list 2>/dev/null | grep -qi '^nvidia-'; then
    echo "runtime_env: CUDA packages were installed; requirements.txt must keep the CPU torch wheel" >&2
    exit 1
fi
for dev_only in pytest onnx onnxruntime; do
    if "$venv_python" -c "import $dev_only" 2>/dev/null; then
        echo "runtime_env: $dev_only is importable: the environment is not requirements.txt alone" >&2
        exit 1
    fi
done
installed=$(date +%s)
echo "runtime_env: requirements.txt installed in $((installed - start)) s"
# the smallest main job that still trains, evaluates and exports: 6 phantoms, 1 epoch of each stage, tiny network
export VOLSSL_SIGNING_KEY="$work/signing_key"
cd "$work"  # an unrelated working directory
"$venv_python" "$root/tools/run_main.py" --method coral --output_dir "$work/run" --data_dir "$work/phantom" \
    --n 6 --n_labeled 2 --n_val 1 --n_test 1 --pretrain_epochs 1 --epochs 1 \
    --values "{'features': 4, 'patch_size': [32, 32], 'pretrain_batch_size': 8, 'batch_size': 8, 'probe_interval': 0}"
zip_path=$(ls "$work"/run/dist/*.zip)
fingerprint=$("$venv_python" "$root/tools/export_bundle.py" key | awk '/^fingerprint/ {print $2}')
"$venv_python" "$root/tools/export_bundle.py" verify "$zip_path" --public_key "$fingerprint"
echo "runtime_env: ok in $(( $(date +%s) - start )) s (install $((installed - start)) s, main job and verify" \
     "$(( $(date +%s) - installed )) s)"
