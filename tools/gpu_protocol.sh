#!/usr/bin/env bash
# The GPU-sized label-efficiency protocol: on one CUDA GPU, within about 8 minutes, the paper-shaped settings that fit,
# through tools/label_efficiency.py (the same CSV, paired table with bootstrap CIs and curve as the CPU protocol).
#
#   A. ACDC, slice pretraining: CORAL vs random init, 2 labelled patients (both frames), U-Net base width 48, mixed
#      precision (the bundles turn AMP on when CUDA is there), CORAL pretraining on the labelled pool's images.
#   B. LA, semi-supervised: CRLN vs supervised-only at the paper's patch 112 x 112 x 80 (V-Net with 16 base filters,
#      batch 2 labelled + 2 unlabelled), 8 labelled volumes; CRLN trains as many epochs as supervised-only did before
#      its validation plateau. On LA-half (1.25 mm) a volume (about 95 x 71 x 44) is smaller than the patch, so each
#      patch holds a whole zero-padded volume; point LA_DATA at full-resolution UA-MT files for the paper's geometry.
#
# Usage (from anywhere; the repository root is found from this file):
#   bash tools/gpu_protocol.sh                 # prepare the data if needed, run A and B, print the tables
#   bash tools/gpu_protocol.sh --dry-run       # print the plan (commands, and each tool's step list when the data are
#                                              # prepared), run nothing; works without a GPU
#   bash tools/gpu_protocol.sh --prepare-only  # convert the data sets into $DATA_OUT (CPU only) and print their size,
#                                              # e.g. to carry them to a GPU machine
# It refuses to run (exit 2) without a CUDA GPU visible to torch, and (exit 3) without the Python packages it needs.
# Prints the GPU, its memory in use (peak of nvidia-smi samples, every 0.5 s) and the iterations per second of every
# run. Interrupted or out of time: run it again, finished steps are skipped (tools/label_efficiency.py resumes).
#
# Measured on one NVIDIA H200 (16 cores, torch 2.11 + CUDA 13, 2026-11-30; data: 40 ACDC training patients, 32 LA
# cases + 10 unlabelled), each bundle run in its own process (startup, imports and data caching: 20-25 s each):
#   ACDC CORAL pretraining, f = 48, 128 x 128, batch 32 x 2 views: 2.1 s per 23-iteration epoch (11 it/s), 20 epochs
#   80 s in all; fine-tuning, batch 10: 3.9-4.5 s per 50-iteration epoch with validation (12 it/s), 77 s for 14 epochs
#   (early stop); test evaluation of 40 volumes 36 s. LA V-Net f = 16, 112 x 112 x 80: supervised 5.5-6.4 s per
#   50-iteration epoch (8.9 it/s), CRLN 9.3-9.5 s (5.3 it/s); test evaluation of 20 volumes 29 s. GPU memory in use
#   at most 4.5 GiB of 140 GiB (nvidia-smi). AMP on throughout. The GPU mostly waits: the per-run startup and the
#   data path, not the network, set these times.
# With these figures one labelled set per part (one pair: 2 runs + 2 test evaluations, plus the CORAL pretraining)
# is what fits in 8 minutes; the defaults below are sized to that (the earlier defaults, 2 sets and 12-20 epochs,
# stopped each part at its cap before the first pair was complete). A single pair is a check of the GPU path, not
# evidence: for a comparison raise N_SETS (and the *_BUDGET_S caps), e.g. N_SETS=3 PRETRAIN_EPOCHS=50 FT_EPOCHS=40
# LA_EPOCHS=40 ACDC_BUDGET_S=3600 LA_BUDGET_S=3600 (about 25 and 35 min on an H200, from the figures above).
#
# Settings (environment variables):
#   VOLSSL_DATA=../shared/data   raw data sets (acdc/, la_half/); DATA_OUT=runs/gpu_data   converted data sets
#   OUT=runs/gpu_protocol        protocol outputs;  PYTHON=python3
#   ACDC_SIZE=128  in-plane centre crop of ACDC (slices are about 256 x 216; 128 at 1.5625 mm holds the heart)
#   ACDC_PATIENTS=70  ACDC training patients in the labelled pool (the labelled sets are drawn from it); the rest of
#                     train.list is converted as unlabelled; pretraining uses both
#   LA_CASES=72  LA training cases in the labelled pool (the 8 drawn are labelled, the rest of the pool unlabelled)
#   PRETRAIN_EPOCHS=10  FT_EPOCHS=12  LA_EPOCHS=6  ITERATIONS=50 (iterations per epoch)  PATIENCE=5
#   N_SETS=1 (labelled sets, 1 seed each)  LR_GRID="[0.0001]" (fine-tuning)  WORKERS=8
#   ACDC_BUDGET_S=290  LA_BUDGET_S=190  wall-clock cap of each part (the tables are written from what finished)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
VOLSSL_DATA="${VOLSSL_DATA:-$ROOT/../shared/data}"
DATA_OUT="${DATA_OUT:-$ROOT/runs/gpu_data}"
OUT="${OUT:-$ROOT/runs/gpu_protocol}"
ACDC_SIZE="${ACDC_SIZE:-128}"
ACDC_PATIENTS="${ACDC_PATIENTS:-70}"
LA_CASES="${LA_CASES:-72}"
LA_DATA="${LA_DATA:-$VOLSSL_DATA/la_half}"
PRETRAIN_EPOCHS="${PRETRAIN_EPOCHS:-10}"
FT_EPOCHS="${FT_EPOCHS:-12}"
LA_EPOCHS="${LA_EPOCHS:-6}"
ITERATIONS="${ITERATIONS:-50}"
PATIENCE="${PATIENCE:-5}"
N_SETS="${N_SETS:-1}"
LR_GRID="${LR_GRID:-[0.0001]}"
WORKERS="${WORKERS:-8}"
ACDC_BUDGET_S="${ACDC_BUDGET_S:-290}"
LA_BUDGET_S="${LA_BUDGET_S:-190}"
export PYTHONPATH="$ROOT/common${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

MODE=run
case "${1:-}" in
    "") ;;
    --dry-run) MODE=dry ;;
    --prepare-only) MODE=prepare ;;
    -h|--help) sed -n '2,45p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "gpu_protocol.sh: unknown argument '$1' (use --dry-run, --prepare-only or nothing)" >&2; exit 64 ;;
esac

ACDC_LIST="$DATA_OUT/acdc${ACDC_SIZE}/datalist.json"
LA_LIST="$DATA_OUT/la/datalist.json"
ACDC_ARGS=(run --datalist "$ACDC_LIST" --output_dir "$OUT/acdc" --family slice --arms '["random", "coral"]'
    --label_counts "[2]" --n_sets "$N_SETS" --seeds "[0]" --finetune '["full"]' --group_regex 'patient\d+'
    --overlay None --lr_grid "$LR_GRID" --patience "$PATIENCE"
    --overrides "{\"features\": 48, \"patch_size\": [$ACDC_SIZE, $ACDC_SIZE], \"num_workers\": $WORKERS, \"sw_batch_size\": 64}"
    --train_overrides "{\"epochs\": $FT_EPOCHS, \"iterations_per_epoch\": $ITERATIONS, \"batch_size\": 10}"
    --pretrain_overrides "{\"pretrain_epochs\": $PRETRAIN_EPOCHS, \"pretrain_batch_size\": 32}")
LA_ARGS=(run --datalist "$LA_LIST" --output_dir "$OUT/la" --family semi --arms '["supervised", "crln"]'
    --label_counts "[8]" --n_sets 1 --seeds "[0]" --overlay None --patience "$PATIENCE"
    --overrides "{\"patch_size\": [112, 112, 80], \"num_workers\": $WORKERS, \"sw_batch_size\": 4, \"val_overlap\": 0.25}"
    --train_overrides "{\"epochs\": $LA_EPOCHS, \"iterations_per_epoch\": $ITERATIONS}")

prepare() {
    if [[ ! -f "$ACDC_LIST" ]]; then
        echo "== ACDC: convert $ACDC_PATIENTS training patients (all labelled: the pool) and crop to $ACDC_SIZE x $ACDC_SIZE"
        "$PYTHON" tools/prepare_data.py acdc "$VOLSSL_DATA/acdc" "$DATA_OUT/acdc_full" --spacing 1.5625,1.5625,10 \
            --n_labeled_patients "$ACDC_PATIENTS" --limit "$ACDC_PATIENTS"
        "$PYTHON" tools/label_efficiency.py crop "$DATA_OUT/acdc_full/datalist.json" "$DATA_OUT/acdc${ACDC_SIZE}" \
            --size "[$ACDC_SIZE, $ACDC_SIZE]"
        rm -rf "$DATA_OUT/acdc_full"
    fi
    if [[ ! -f "$LA_LIST" ]]; then
        echo "== LA: convert $LA_CASES training cases (all labelled: the pool), 8 validation, the test list"
        "$PYTHON" tools/prepare_data.py la "$LA_DATA" "$DATA_OUT/la" --n_labeled "$LA_CASES" --n_val 8 --limit "$LA_CASES"
    fi
    du -sh "$DATA_OUT"/* 2>/dev/null || true
}

if [[ "$MODE" == dry ]]; then
    echo "plan: data in $DATA_OUT (prepared from $VOLSSL_DATA if absent), outputs in $OUT"
    for args in ACDC LA; do
        declare -n list="${args}_ARGS"
        datalist="${args}_LIST"
        echo "== part ${args}: $PYTHON tools/label_efficiency.py $("$PYTHON" -c 'import shlex, sys; print(shlex.join(sys.argv[1:]))' "${list[@]}")"
        if [[ -f "${!datalist}" ]]; then
            "$PYTHON" tools/label_efficiency.py "${list[@]}" --dry_run
        else
            echo "   (data not prepared yet: ${!datalist}; the step list needs it)"
        fi
    done
    echo "refuses to start without CUDA; prints GPU memory (nvidia-smi) and iterations/s per run"
    exit 0
fi

missing=$("$PYTHON" - <<'EOF'
import importlib.util
print(" ".join(m for m in ("torch", "monai", "ignite", "nibabel", "fire", "h5py", "matplotlib", "scipy")
               if importlib.util.find_spec(m) is None))
EOF
)
if [[ -n "$missing" ]]; then
    echo "gpu_protocol.sh: missing Python packages: $missing (install requirements.txt; on a bare GPU machine carry" \
         "them as wheels: monai, pytorch-ignite, nibabel, fire)" >&2
    exit 3
fi
if [[ "$MODE" == prepare ]]; then
    prepare
    exit 0
fi
if ! "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_protocol.sh: no CUDA GPU is visible to torch (torch.cuda.is_available() is False): this protocol needs" \
         "one GPU and was not started. Use --dry-run to see the plan, or tools/label_efficiency.py for the CPU protocol." >&2
    exit 2
fi

"$PYTHON" -c "import torch; p = torch.cuda.get_device_properties(0); print(f'GPU: {p.name}, {p.total_memory / 2**30:.1f} GiB, torch {torch.__version__}')"
prepare
mkdir -p "$OUT"
MEMLOG="$OUT/gpu_memory.log"
SAMPLER=""
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=memory.used,memory.total --format=csv,noheader,nounits -lms 500 > "$MEMLOG" &
    SAMPLER=$!
    trap '[[ -n "$SAMPLER" ]] && kill "$SAMPLER" 2>/dev/null || true' EXIT
fi
START=$SECONDS

part() {  # name, budget in seconds, tool arguments...
    local name=$1 budget=$2
    shift 2
    local t0=$SECONDS status=0
    echo "== part $name (at most ${budget} s)"
    timeout --signal=INT --kill-after=20 "$budget" "$PYTHON" tools/label_efficiency.py "$@" || status=$?
    if [[ $status -eq 124 ]]; then
        echo "   part $name reached its ${budget} s cap: tables from the finished runs; run again to continue"
    elif [[ $status -ne 0 ]]; then
        echo "   part $name failed (exit $status)" >&2
    fi
    "$PYTHON" tools/label_efficiency.py summarize "$OUT/$name" || true
    echo "   part $name: $((SECONDS - t0)) s"
}

part acdc "$ACDC_BUDGET_S" "${ACDC_ARGS[@]}"
part la "$LA_BUDGET_S" "${LA_ARGS[@]}"

if [[ -n "$SAMPLER" ]]; then
    kill "$SAMPLER" 2>/dev/null || true
    SAMPLER=""
    awk -F', ' '{ if ($1 > max) max = $1; total = $2 } END { printf "GPU memory in use: peak %d MiB of %d MiB (nvidia-smi, every 0.5 s)\n", max, total }' "$MEMLOG"
fi
echo "total: $((SECONDS - START)) s; tables: $OUT/acdc/paired.md, $OUT/la/paired.md; runs: */runs.csv (its_per_s)"
