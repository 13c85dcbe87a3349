#!/bin/sh
# Regenerates the tables of "Capped scores" (docs/study.md)
# from the runs, without training:
#     sh results/study_fashion/capped_rule/regenerate.sh [ROOT FRESH_ROOT [HURT_ROOTS...]]
# ROOT (runs/cal) holds seeds 0-9 and FRESH_ROOT (runs/fresh) seeds 10-14 of the arms kd,
# labels, tllm_refit (the default rule), calibrated_refit and capped_refit; HURT_ROOTS
# (runs/score_a runs/score_b) the twenty seeds of KD and label-only students that say which
# classes KD hurts, and runs/score_cache their cached logits. docs/study.md has the commands.
set -e
cd "$(dirname "$0")/../../.."
OUT=results/study_fashion/capped_rule
ROOT="${1:-runs/cal}"
FRESH_ROOT="${2:-runs/fresh}"
[ $# -gt 1 ] && shift 2
HURT_ROOTS="${*:-runs/score_a runs/score_b}"
PYTHON="${PYTHON:-.venv/bin/python}"
ARMS=tllm_refit,calibrated_refit,capped_refit
report() {  # report OUT_DIR ROOT SEEDS
    "$PYTHON" tools/study.py --flagfile=configs/study_fashion.flags --root="$2" \
        --seeds="$3" --student_models=mlp_16,lenet_2 --teacher_models=mlp_64,mlp_256,mlp_1024 \
        --arms="kd,$ARMS" --report_only --results_dir="$OUT/$1" > /dev/null
    echo "$OUT/$1/study.md"
}
"$PYTHON" "$OUT/cap_choice.py" runs/score_cache > "$OUT/cap_choice.md"
echo "$OUT/cap_choice.md"
report all_ten "$ROOT" 0,1,2,3,4,5,6,7,8,9
report fresh "$FRESH_ROOT" 10,11,12,13,14
# shellcheck disable=SC2086
"$PYTHON" results/study_fashion/calibrated_rule/compare.py --arms="$ARMS" \
    --versus=tllm_refit,calibrated_refit "$ROOT" $HURT_ROOTS > "$OUT/compare.md"
# shellcheck disable=SC2086
"$PYTHON" results/study_fashion/calibrated_rule/compare.py --arms="$ARMS" \
    --versus=tllm_refit,calibrated_refit --seed_groups=10-14 "$FRESH_ROOT" $HURT_ROOTS \
    > "$OUT/compare_fresh.md"
echo "$OUT/compare.md $OUT/compare_fresh.md"
