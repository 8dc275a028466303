#!/usr/bin/env bash
# The evidence runs still to do (issue 23), each one resumable command of tools/label_efficiency.py at low priority.
#
#   budget  ACDC budget curve: PCL and CORAL pretrained once each for 800 epochs, the encoder kept after 50, 200 and
#           800 epochs (1x, 4x, 16x the 50 epochs of the README's ACDC tables), each snapshot fine-tuned full and
#           frozen at 1 labelled patient on the README's 3 sets x 2 seeds, against random init (the README's ACDC
#           protocol otherwise: 96 x 96, f = 16, lr chosen on validation from {1e-3, 3e-4}, early stopping);
#           -> runs/le_acdc_budget/budget.{md,csv,png} (paired gain against pretraining iterations).
#   paper   ACDC under the released CORAL/PCL fine-tuning recipe (paper_finetune.json: Adam 5e-5 -> 5e-6 cosine,
#           cross-entropy, batch 10, 100 passes over the labelled slices, last epoch kept, no early stopping, no lr
#           choice), random init vs PCL vs CORAL at 1 and 2 labelled patients, full fine-tuning, 3 sets x 2 seeds;
#           the 50-epoch encoders of runs/le_acdc are reused when present, so the two recipes pair on the same
#           encoders, sets and seeds (label_efficiency.py compare runs/le_acdc runs/le_acdc_paper).
#   la6     LA-half, 8 labelled of 72: supervised-only vs CRLN on 6 labelled sets x 1 seed (the set is the unit of
#           the interval), the patience counting only after epoch 10 (early_stop_min_epochs), CRLN at the
#           matched budget.
#   hippo   MSD hippocampus, 4 labelled and 126 unlabelled volumes (the released split's 14 labelled and 116 of its 126
#           unlabelled cases; the same 20 validation and 40 test volumes): supervised-only vs CRLN,
#           6 labelled sets x 1 seed, the CRLN card's hippocampus recipe (cpu_small.json + adam.json, patch
#           32 x 48 x 32, dropout 0).
#
# Usage (from anywhere; the repository root is found from this file):
#   bash tools/evidence_runs.sh [--dry-run] [prepare|budget|paper|la6|hippo|all]...   (default: all, in that order)
# --dry-run prints every command and each protocol's step list (done / to do), runs nothing. Interrupted: run the
# same command again; every finished step is skipped and an interrupted training resumes from its last epoch.
#
# Estimated cost on the 2-core development CPU (from the README's measured ACDC and LA-half runs, 2 threads, the
# machine otherwise idle; not measured for these exact runs): budget about 12 h of pretraining (PCL and CORAL,
# 800 epochs each at about 27 s per epoch) + about 3 h of fine-tuning (84 runs + the lr grid); paper about 1.5 h
# (36 runs of 200-400 iterations, validation every 2 epochs); la6 about 2 h (12 runs); hippo about 1.5 h (12 runs).
#
# Settings (environment variables):
#   VOLSSL_DATA=../shared/data  raw data sets (acdc/, la_half/, hippocampus/)
#   DATA=runs/data  converted data sets;  OUT=runs  protocol output folders;  PYTHON=python3
#   OMP_NUM_THREADS=2  threads per run;  NICE=10  niceness of every run
#   SLICE_ARMS="['random','pcl','coral']"  arms of budget and paper (add 'sal' for SAL; arms may be added to a
#                                          protocol folder later, its finished runs are kept)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
VOLSSL_DATA="${VOLSSL_DATA:-$ROOT/../shared/data}"
DATA="${DATA:-$ROOT/runs/data}"
OUT="${OUT:-$ROOT/runs}"
NICE="${NICE:-10}"
SLICE_ARMS="${SLICE_ARMS:-['random','pcl','coral']}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
export PYTHONPATH="$ROOT/common${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

DRY=0
STAGES=()
for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY=1 ;;
        prepare|budget|paper|la6|hippo) STAGES+=("$arg") ;;
        all) STAGES+=(prepare budget paper la6 hippo) ;;
        -h|--help) sed -n '2,37p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "evidence_runs.sh: unknown argument '$arg' (use --dry-run, prepare, budget, paper, la6, hippo, all)" >&2
           exit 64 ;;
    esac
done
[[ ${#STAGES[@]} -eq 0 ]] && STAGES=(prepare budget paper la6 hippo)

ACDC_LIST="$DATA/acdc96/datalist.json"
LA_LIST="$DATA/la_pool/datalist.json"
HIPPO_LIST="$DATA/hippo_pool/datalist.json"
LE=(nice -n "$NICE" "$PYTHON" tools/label_efficiency.py)

# the README's ACDC protocol (section "Evidence"), shared by the budget curve
ACDC_COMMON=(--family slice --group_regex 'patient\d+' --overrides "{'patch_size': [96, 96]}")
BUDGET_ARGS=(run --datalist "$ACDC_LIST" --output_dir "$OUT/le_acdc_budget" "${ACDC_COMMON[@]}"
    --arms "$SLICE_ARMS" --label_counts "[1]" --n_sets 3 --seeds "[0,1]"
    --budget_epochs "[50,200,800]" --lr_grid "[1e-3,3e-4]" --patience 5
    --train_overrides "{'epochs': 40, 'iterations_per_epoch': 50}" --pretrain_overrides "{'probe_interval': 10}")
PAPER_ARGS=(run --datalist "$ACDC_LIST" --output_dir "$OUT/le_acdc_paper" "${ACDC_COMMON[@]}"
    --arms "$SLICE_ARMS" --label_counts "[1,2]" --n_sets 3 --seeds "[0,1]" --finetune "['full']"
    --train_overlay paper_finetune.json --lr_grid "[5e-5]" --patience None
    --pretrain_overrides "{'pretrain_epochs': 50}")
LA6_ARGS=(run --datalist "$LA_LIST" --output_dir "$OUT/le_la6" --family semi --arms "['supervised','crln']"
    --label_counts "[8]" --n_sets 6 --seeds "[0]" --patience 5
    --train_overrides "{'epochs': 40, 'iterations_per_epoch': 50, 'val_interval': 1}"
    --eval_variants "{'student': {'checkpoint': '{root}/models/model_student.pt'}}")
HIPPO_ARGS=(run --datalist "$HIPPO_LIST" --output_dir "$OUT/le_hippo4" --family semi --arms "['supervised','crln']"
    --label_counts "[4]" --n_sets 6 --seeds "[0]" --patience 5 --overlay cpu_small.json,adam.json
    --overrides "{'num_classes': 3, 'patch_size': [32, 48, 32], 'dropout': 0.0}"
    --train_overrides "{'epochs': 40, 'iterations_per_epoch': 50, 'val_interval': 1}"
    --eval_variants "{'student': {'checkpoint': '{root}/models/model_student.pt'}}")

say() { echo "== $*"; }
show() { printf '  $'; printf ' %q' "$@"; printf '\n'; }
run_or_show() {  # run a command, or print it in a dry run
    show "$@"
    [[ $DRY -eq 1 ]] || "$@"
}

prepare() {
    if [[ ! -f "$ACDC_LIST" ]]; then
        say "ACDC: 70 training patients (the labelled pool), nominal spacing, cropped to 96 x 96"
        run_or_show "$PYTHON" tools/prepare_data.py acdc "$VOLSSL_DATA/acdc" "$DATA/acdc" 1.5625,1.5625,10 \
            --n_labeled_patients 70
        run_or_show "$PYTHON" tools/label_efficiency.py crop "$DATA/acdc/datalist.json" "$DATA/acdc96" --size "[96,96]"
    fi
    if [[ ! -f "$LA_LIST" ]]; then
        say "LA-half: 72 pool cases, 8 validation, UA-MT's 20 test cases"
        run_or_show "$PYTHON" tools/prepare_data.py la "$VOLSSL_DATA/la_half" "$DATA/la_pool" --n_labeled 72 --n_val 8 \
            --seed 0
    fi
    if [[ ! -f "$HIPPO_LIST" ]]; then
        say "hippocampus: a pool of 130 (4 labelled + 126 unlabelled per set), 20 validation, 40 test (seed 0)"
        run_or_show "$PYTHON" tools/prepare_data.py msd "$VOLSSL_DATA/hippocampus" "$HIPPO_LIST" 130 20 40 --seed 0 \
            --n_unlabeled 0
    fi
}

protocol() {  # name datalist args...: the protocol's plan in a dry run, else the protocol itself
    local name="$1" list="$2"
    shift 2
    say "$name"
    if [[ $DRY -eq 1 ]]; then
        show "${LE[@]}" "$@"
        if [[ -f "$list" ]]; then
            "${LE[@]}" "$@" --dry_run
        else
            echo "  (data not prepared yet: $list; run the 'prepare' stage)"
        fi
        return
    fi
    if [[ ! -f "$list" ]]; then
        echo "evidence_runs.sh: $list: not prepared (run: bash tools/evidence_runs.sh prepare)" >&2
        exit 2
    fi
    show "${LE[@]}" "$@"
    "${LE[@]}" "$@"
}

reuse_acdc_pretraining() {  # the paper recipe fine-tunes the same 50-epoch encoders as the README's ACDC tables
    local arm
    for arm in pcl coral sal; do
        local src="$OUT/le_acdc/pretrain/$arm" dst="$OUT/le_acdc_paper/pretrain/$arm"
        if [[ -f "$src/models/pretrain.pt" && ! -e "$dst" ]]; then
            say "reusing the $arm encoder of $OUT/le_acdc"
            run_or_show mkdir -p "$(dirname "$dst")"
            run_or_show cp -r "$src" "$dst"
        fi
    done
}

for stage in "${STAGES[@]}"; do
    case "$stage" in
        prepare) prepare ;;
        budget) protocol "budget curve, ACDC, 1 labelled patient" "$ACDC_LIST" "${BUDGET_ARGS[@]}" ;;
        paper) reuse_acdc_pretraining
               protocol "paper recipe, ACDC, 1 and 2 labelled patients" "$ACDC_LIST" "${PAPER_ARGS[@]}" ;;
        la6) protocol "LA-half, 8 labelled, 6 sets x 1 seed" "$LA_LIST" "${LA6_ARGS[@]}" ;;
        hippo) protocol "hippocampus, 4 labelled + 126 unlabelled, 6 sets x 1 seed" "$HIPPO_LIST" "${HIPPO_ARGS[@]}" ;;
    esac
done
