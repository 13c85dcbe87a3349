#!/bin/sh
# Regenerates the tables of "The calibrated rule in the library" (docs/study.md) from the runs,
# without training:
#     sh results/study_fashion/calibrated_rule/regenerate.sh [ROOT [HURT_ROOTS...]]
# ROOT (runs/cal) holds the calibrated arms, their label-only references and KD students of
# seeds 0-9; HURT_ROOTS (runs/score_a runs/score_b) the twenty seeds of KD and label-only students
# that say which classes KD hurts. docs/study.md has the commands that made them.
set -e
cd "$(dirname "$0")/../../.."
OUT=results/study_fashion/calibrated_rule
ROOT="${1:-runs/cal}"
[ $# -gt 0 ] && shift
HURT_ROOTS="${*:-runs/score_a runs/score_b}"
PYTHON="${PYTHON:-.venv/bin/python}"
report() {  # report OUT_DIR SEEDS ARMS
    "$PYTHON" tools/study.py --flagfile=configs/study_fashion.flags --root="$ROOT" \
        --seeds="$2" --student_models=mlp_16,lenet_2 --teacher_models=mlp_64,mlp_256,mlp_1024 \
        --arms="$3" --report_only --results_dir="$OUT/$1" > /dev/null
    echo "$OUT/$1/study.md"
}
# Chosen on seeds 0-4 between the two schedules; confirmed on 5-9 with the one chosen.
report selection 0,1,2,3,4 kd,calibrated_refit,calibrated_at_end_refit
report confirmation 5,6,7,8,9 kd,calibrated_refit
report all_ten 0,1,2,3,4,5,6,7,8,9 kd,calibrated_refit
# shellcheck disable=SC2086
"$PYTHON" "$OUT/compare.py" "$ROOT" $HURT_ROOTS > "$OUT/compare.md"
echo "$OUT/compare.md"
