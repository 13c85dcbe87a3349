#!/bin/sh
# Regenerates the tables of "Capped scores" and "The capped rule with the fallback, in two more
# recipes, and on the planted pair" (docs/study.md) from the runs, without training:
#     [FEW_ROOT=...] [T2_ROOT=...] \
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
report() {  # report OUT_DIR ROOT SEEDS [ARMS [FLAG...]]: FLAGs after the study's flag file
    out="$1" root="$2" seeds="$3" arms="${4:-$ARMS}"
    [ $# -gt 3 ] && shift 4 || shift 3
    "$PYTHON" tools/study.py --flagfile=configs/study_fashion.flags "$@" --root="$root" \
        --seeds="$seeds" --student_models=mlp_16,lenet_2 \
        --teacher_models=mlp_64,mlp_256,mlp_1024 --arms="kd,$arms" --report_only \
        --results_dir="$OUT/$out" > /dev/null
    echo "$OUT/$out/study.md"
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
rows_of() {  # rows_of ARM GROUPS: the arm's rows files of those groups, comma-separated
    list=""
    for group in $2; do list="$list${list:+,}$FALLBACK/${1}_$group.jsonl"; done
    echo "$list"
}
fallback_tables() {  # fallback_tables NAME GROUPS SEED_SETS: GROUPS are the rows' suffixes
    capped="$(rows_of capped_refit "$2")" default="$(rows_of tllm_refit "$2")"
    for level in 0.2 0.05; do
        "$PYTHON" "$OUT/with_fallback.py" --arm=capped_refit --rows="$capped" \
            --versus=tllm_refit --versus_rows="$default" --seed_sets="$3" --significance="$level"
    done > "$FALLBACK/$1.md"
    echo "$FALLBACK/$1.md"
}
per_class_tables() {  # per_class_tables NAME GROUPS SEED_SETS RESULTS
    for arm in capped_refit tllm_refit; do
        "$PYTHON" "$PRIOR/fallback_per_class.py" --rows="$(rows_of "$arm" "$2")" --results="$4" \
            --seed_sets="$3" --default_arm="$arm" --significance=0.2 \
            > "$FALLBACK/per_class_${1}_$arm.md"
        echo "$FALLBACK/per_class_${1}_$arm.md"
    done
}
fallback_tables base "cal fresh" 0-9,10-14
per_class_tables base "cal fresh" 0-9,10-14 "$ROOT/results.jsonl,$FRESH_ROOT/results.jsonl"
# Two more recipes (2026-12-07, night), the capped and default rules' arms on the same seeds,
# trained without the fallback and judged with it as above: the second recipe (1,000 labelled
# images, 60 epochs; FEW_ROOT, runs/few_cap, seeds 20-29) and T = 2 with label and distillation
# weights 0.5 and 0.5 (T2_ROOT, runs/t2cap, seeds 0-9). The classes KD hurts are each recipe's
# own, chosen on its ten seeds.
FEW_ROOT="${FEW_ROOT:-runs/few_cap}"
T2_ROOT="${T2_ROOT:-runs/t2cap}"
recipe() {  # recipe NAME ROOT SEEDS SEED_GROUPS FLAG...
    name="$1" root="$2" seeds="$3" groups="$4"
    shift 4
    if [ ! -f "$root/results.jsonl" ]; then echo "$OUT/$name: left as it is (no $root)"; return; fi
    report "$name" "$root" "$seeds" tllm_refit,capped_refit "$@"
    "$PYTHON" results/study_fashion/calibrated_rule/compare.py --arms=tllm_refit,capped_refit \
        --versus=tllm_refit --seed_groups="$groups" "$root" "$root" > "$OUT/$name/compare.md"
    echo "$OUT/$name/compare.md"
    for arm in capped_refit tllm_refit; do  # judges only the runs the rows lack
        "$PYTHON" "$PRIOR/reference_fallback.py" --results="$root/results.jsonl" \
            --rows="$FALLBACK/${arm}_$name.jsonl" --default_arm="$arm" "$root" > /dev/null
    done
    first="${seeds%%,*}" last="${seeds##*,}"
    fallback_tables "$name" "$name" "$groups,$first-$last"
    per_class_tables "$name" "$name" "$first-$last" "$root/results.jsonl"
}
recipe few_labels "$FEW_ROOT" 20,21,22,23,24,25,26,27,28,29 20-24,25-29 \
    --flagfile=configs/study_fashion_few_labels.flags
recipe t2 "$T2_ROOT" 0,1,2,3,4,5,6,7,8,9 0-4,5-9 --temperature=2 --alpha=0.5 --beta=0.5
