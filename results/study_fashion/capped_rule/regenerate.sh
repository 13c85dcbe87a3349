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
# With the label-only reference's fallback (the library's default): the stored capped and default
# students of ROOT and FRESH_ROOT judged against their references by
# ../prior_offsets/reference_fallback.py (per-seed rows in fallback/, committed; about 10 minutes
# from the runs), then tabled here at the library's level, 0.2, and at 0.05.
FALLBACK="$OUT/fallback"
PRIOR=results/study_fashion/prior_offsets
fallback_tables() {  # fallback_tables NAME GROUPS SEED_SETS: GROUPS are the rows' suffixes
    capped="" default=""
    for group in $2; do
        capped="$capped${capped:+,}$FALLBACK/capped_refit_$group.jsonl"
        default="$default${default:+,}$FALLBACK/tllm_refit_$group.jsonl"
    done
    for level in 0.2 0.05; do
        "$PYTHON" "$OUT/with_fallback.py" --arm=capped_refit --rows="$capped" \
            --versus=tllm_refit --versus_rows="$default" --seed_sets="$3" --significance="$level"
    done > "$FALLBACK/$1.md"
    echo "$FALLBACK/$1.md"
}
per_class_tables() {  # per_class_tables NAME GROUPS SEED_SETS RESULTS
    for arm in capped_refit tllm_refit; do
        rows=""
        for group in $2; do rows="$rows${rows:+,}$FALLBACK/${arm}_$group.jsonl"; done
        "$PYTHON" "$PRIOR/fallback_per_class.py" --rows="$rows" --results="$4" \
            --seed_sets="$3" --default_arm="$arm" --significance=0.2 \
            > "$FALLBACK/per_class_${1}_$arm.md"
        echo "$FALLBACK/per_class_${1}_$arm.md"
    done
}
fallback_tables base "cal fresh" 0-9,10-14
per_class_tables base "cal fresh" 0-9,10-14 "$ROOT/results.jsonl,$FRESH_ROOT/results.jsonl"
