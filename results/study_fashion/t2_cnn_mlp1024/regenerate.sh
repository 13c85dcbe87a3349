#!/bin/sh
# Regenerates the tables of "The one hurt class the default did not recover" (docs/study.md) from
# the runs; the fallback rows are judged once (a few minutes) and resume:
#     sh results/study_fashion/t2_cnn_mlp1024/regenerate.sh [FRESH_ROOT [SECOND_ROOT]]
# FRESH_ROOT (runs/t2m) holds seeds 10-19 and SECOND_ROOT (runs/t2cap) seeds 0-9 of the lenet_2
# student with the mlp_1024 teacher at T = 2, alpha 0.5, beta 0.5, arms kd and tllm_refit (the
# latter root holds other settings too, left out here). prediction.md says what was expected.
set -e
cd "$(dirname "$0")/../../.."
OUT=results/study_fashion/t2_cnn_mlp1024
FRESH_ROOT="${1:-runs/t2m}"
SECOND_ROOT="${2:-runs/t2cap}"
PYTHON="${PYTHON:-.venv/bin/python}"
PRIOR=results/study_fashion/prior_offsets
RECIPE="--temperature=2 --alpha=0.5 --beta=0.5"
# The setting's records of both roots in one root of their own, for the twenty seeds' report and
# the fallback: the students', the label-only student's (no teacher) and the teacher's (no student).
TWENTY="${TWENTY:-runs/t2m20}"
mkdir -p "$TWENTY"
cat "$SECOND_ROOT/results.jsonl" "$FRESH_ROOT/results.jsonl" | grep -E \
    '"student": "lenet_2", "teacher": "(mlp_1024)?"|"student": "", "teacher": "mlp_1024"' \
    > "$TWENTY/results.jsonl"
report() {  # report OUT_DIR ROOT SEEDS
    # shellcheck disable=SC2086
    "$PYTHON" tools/study.py --flagfile=configs/study_fashion.flags $RECIPE --root="$2" \
        --seeds="$3" --student_models=lenet_2 --teacher_models=mlp_1024 --arms=kd,tllm_refit \
        --report_only --results_dir="$OUT/$1" > /dev/null
    echo "$OUT/$1/study.md"
}
report fresh "$FRESH_ROOT" "$(seq -s, 10 19)"
report second_execution "$SECOND_ROOT" "$(seq -s, 0 9)"
report twenty_seeds "$TWENTY" "$(seq -s, 0 19)"
# The label-only reference's fallback, at the library's level (0.2): each stored student judged
# against its reference on the held-out split (rows that resume), then tabled overall and for the
# class chosen beforehand, T-shirt/top, and the classes KD hurts on each set of seeds.
ROWS="$OUT/fallback.jsonl"
"$PYTHON" "$PRIOR/reference_fallback.py" --results="$TWENTY/results.jsonl" --rows="$ROWS" \
    --seed_sets=10-19,0-9,0-19 --significance=0.2 "$FRESH_ROOT" "$SECOND_ROOT" \
    > "$OUT/fallback.md"
echo "$OUT/fallback.md"
for classes in T-shirt/top ""; do
    "$PYTHON" "$PRIOR/fallback_per_class.py" --rows="$ROWS" --results="$TWENTY/results.jsonl" \
        --seed_sets=10-19,0-9,0-19 --significance=0.2 ${classes:+--classes="$classes"}
done > "$OUT/per_class.md"
echo "$OUT/per_class.md"
