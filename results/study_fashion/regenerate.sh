#!/bin/sh
# Regenerates every table, JSON and plot under results/study_fashion/ from the finished runs of
# the Fashion-MNIST study (docs/study.md), without training:
#     sh results/study_fashion/regenerate.sh [ROOT]      (ROOT: where the study ran; runs/study)
# A run that is missing is left out, and a setting reports the seeds it has; a table none of
# whose runs is found, or whose runs were trained with other flags than its line gives, is left
# as it is (tools/study.py refuses to report nothing, or a mix).
set -e
cd "$(dirname "$0")/../.."
ROOT="${1:-runs/study}"
PYTHON="${PYTHON:-.venv/bin/python}"
RULES=kd,tllm,unpaired,paired,paired_matched,paired_matched_sticky,paired_matched_sticky_bh,paired_matched_sticky_soft_label,paired_sticky_half_warmup,paired_matched_sticky_half_warmup
FLAGFILE=configs/study_fashion.flags
# Flags of a study run beside its flag file. Every run before 2026-12-05 (afternoon) had the
# defaults of then, without prior offsets: the reports say so in the command they print.
BEFORE="--noprior_offsets --norule_prior_offsets"
EXTRA_FLAGS="$BEFORE"
report() {  # report OUT_DIR SEEDS STUDENTS TEACHERS ARMS
    if "$PYTHON" tools/study.py --flagfile="$FLAGFILE" $EXTRA_FLAGS --root="$ROOT" \
        --seeds="$2" --student_models="$3" --teacher_models="$4" --arms="$5" \
        --report_only --results_dir="results/study_fashion/$1" > /dev/null; then
        echo "results/study_fashion/$1/study.md"
    else
        echo "results/study_fashion/$1: left as it is (no finished run under $ROOT, or runs of other flags: tools/study.py's error above)"
    fi
}
ALL=0,1,2,3,4,5,6,7,8,9
# tllm_patience2 is the default since the night of 2026-12-03; tllm, the default before it.
report selection 0,1,2,3,4 mlp_16 mlp_256 "$RULES,tllm_patience2,tllm_patience3"
report confirmation 5,6,7,8,9 mlp_16 mlp_256 "$RULES,tllm_patience2"
report all_seeds "$ALL" mlp_16 mlp_256 "$RULES,tllm_patience2"
report capacity "$ALL" mlp_16 mlp_64,mlp_256,mlp_1024 kd,tllm_patience2,tllm,unpaired
report cnn_student "$ALL" lenet_2 mlp_64,mlp_256,mlp_1024 kd,tllm_patience2,tllm,unpaired
report losses "$ALL" mlp_16 mlp_256 kd,tllm,dkd,dkd_tllm,kd_ls,kd_ls_tllm
report store "$ALL" mlp_16 mlp_256 kd,kd_store
# Judged against the finished reference: run on the selection seeds only (not chosen).
report final_reference 0,1,2,3,4 mlp_16 mlp_64,mlp_256,mlp_1024 kd,tllm,tllm_final_reference
# Patience: a class masked only when behind at 2 or 3 consecutive updates, chosen on seeds 0-4
# of the three mlp_16 settings (patience 2), confirmed on seeds 5-9 (in capacity and all_seeds).
report patience 0,1,2,3,4 mlp_16 mlp_64,mlp_256,mlp_1024 kd,tllm,tllm_patience2,tllm_patience3
# Recovery of the classes KD hurts (2026-12-04): an earlier first update (tllm_warmup5, chosen or
# not on seeds 0-4) and the hurt classes masked from the first step (the tllm_masked_* arms).
# Run in a fresh root (RECOVERY_ROOT: the two halves of that study, runs/study_a and runs/study_b,
# concatenated); its kd, labels and tllm_patience2 runs are those arms re-trained.
RECOVERY_ROOT="${RECOVERY_ROOT:-runs/study_recovery}"
ROOT="$RECOVERY_ROOT" report recovery_selection 0,1,2,3,4 mlp_16 mlp_64,mlp_256,mlp_1024 kd,tllm_patience2,tllm_warmup5
ROOT="$RECOVERY_ROOT" report recovery "$ALL" mlp_16 mlp_64,mlp_256,mlp_1024 kd,tllm_patience2,tllm_warmup5,tllm_masked_pullover,tllm_masked_coat_sneaker
# The policies isolate and exclude (2026-12-04, their own fresh root, again two halves
# concatenated).
ISOLATE_ROOT="${ISOLATE_ROOT:-runs/study_isolate}"
ISOLATE_ARMS=kd,tllm_patience2,tllm_isolate,tllm_isolate_masked_pullover,tllm_isolate_masked_coat_sneaker,tllm_exclude,tllm_exclude_masked_pullover,tllm_exclude_masked_coat_sneaker,tllm_exclude_patience3
ROOT="$ISOLATE_ROOT" report isolate_selection 0,1,2,3,4 mlp_16 mlp_256,mlp_1024 "$ISOLATE_ARMS"
ROOT="$ISOLATE_ROOT" report isolate "$ALL" mlp_16 mlp_256,mlp_1024 "$ISOLATE_ARMS"
# The policy behind the recovery (2026-12-04, evening): the hurt classes masked from the first step
# under soft_label, soft_label with the rule, and two passes (the default's final mask, masked from
# the first step of a second run). The CNN setting's kd, labels and tllm_patience2 runs were
# re-trained in this root; the mlp_16 ones are the isolate root's (the same two halves).
POLICY_ROOT="${POLICY_ROOT:-runs/study_policy}"
POLICY_ARMS=kd,tllm_patience2,tllm_soft_label,tllm_two_pass,tllm_two_pass_soft_label
ROOT="$POLICY_ROOT" report policy_selection 0,1,2,3,4 mlp_16,lenet_2 mlp_256,mlp_1024 "$POLICY_ARMS"
ROOT="$POLICY_ROOT" report policy_mlp "$ALL" mlp_16 mlp_256,mlp_1024 "$POLICY_ARMS,tllm_soft_label_masked_pullover,tllm_soft_label_masked_coat_sneaker"
ROOT="$POLICY_ROOT" report policy_cnn "$ALL" lenet_2 mlp_256 "$POLICY_ARMS,tllm_warmup5,tllm_masked_pullover_sneaker,tllm_soft_label_masked_pullover_sneaker"
# The mask decided in a window of three updates (--max_updates=3), and two passes whose first only
# judges the finished students (2026-12-04, night): the policy root's two halves again, with these
# arms added (WINDOW_ROOT: runs/study_a and runs/study_b concatenated once they had finished).
WINDOW_ROOT="${WINDOW_ROOT:-runs/study_window}"
WINDOW_ARMS=kd,tllm_patience2,tllm_soft_label,tllm_updates3,tllm_soft_label_updates3,tllm_two_pass_soft_label,tllm_judge_at_end,tllm_two_pass_at_end_soft_label
ROOT="$WINDOW_ROOT" report window_selection 0,1,2,3,4 mlp_16,lenet_2 mlp_256,mlp_1024 "$WINDOW_ARMS"
ROOT="$WINDOW_ROOT" report window_confirmation 5,6,7,8,9 mlp_16,lenet_2 mlp_256,mlp_1024 "$WINDOW_ARMS"
ROOT="$WINDOW_ROOT" report window "$ALL" mlp_16,lenet_2 mlp_256,mlp_1024 "$WINDOW_ARMS"
# Ten fresh seeds (10-19) of the default and the two-run recipe, and all twenty (2026-12-04,
# night): the same two halves, seeds 10-19 added (SEEDS20_ROOT: runs/study_a and runs/study_b
# concatenated once they had finished).
SEEDS20_ROOT="${SEEDS20_ROOT:-runs/study_seeds20}"
SEEDS20_ARMS=kd,tllm_patience2,tllm_two_pass_soft_label
FRESH=10,11,12,13,14,15,16,17,18,19
ROOT="$SEEDS20_ROOT" report recipe_fresh "$FRESH" mlp_16,lenet_2 mlp_256,mlp_1024 "$SEEDS20_ARMS"
ROOT="$SEEDS20_ROOT" report recipe_20_seeds "$ALL,$FRESH" mlp_16,lenet_2 mlp_256,mlp_1024 "$SEEDS20_ARMS"
# The refit student as the default (2026-12-04, late): its confirmation on ten more fresh seeds
# (20-29), run once after the choice (CONFIRM_ROOT: runs/study_c and runs/study_d concatenated).
CONFIRM_ROOT="${CONFIRM_ROOT:-runs/study_seeds30}"
ROOT="$CONFIRM_ROOT" report refit_confirmation 20,21,22,23,24,25,26,27,28,29 mlp_16,lenet_2 mlp_256,mlp_1024 "$SEEDS20_ARMS"
# The refit's safeguard (2026-12-04, night): seeds 0-29 re-judged without training by
# refit_safeguard/rejudge.py (REJUDGED_ROOT: its --out; the tllm_refit arm there is the stored
# refit, or the stored tllm student where the refit is behind it on the held-out split).
REJUDGED_ROOT="${REJUDGED_ROOT:-runs/study_rejudged}"
REFIT_ARMS=kd,tllm_patience2,tllm_two_pass_soft_label,tllm_refit
ROOT="$REJUDGED_ROOT" report refit_safeguard/thirty_seeds "$(seq -s, 0 29)" mlp_16,lenet_2 mlp_256,mlp_1024 "$REFIT_ARMS"
# ... and ten fresh seeds (30-39) run through the stages with the arm tllm_refit
# (FRESH40_ROOT: runs/study_e and runs/study_f concatenated once they had finished).
FRESH40_ROOT="${FRESH40_ROOT:-runs/study_fresh40}"
ROOT="$FRESH40_ROOT" report refit_safeguard/fresh_seeds "$(seq -s, 30 39)" mlp_16,lenet_2 mlp_256,mlp_1024 "$REFIT_ARMS"
# ... and the forty seeds together (ALL40_ROOT: the results.jsonl of REJUDGED_ROOT and
# FRESH40_ROOT concatenated).
ALL40_ROOT="${ALL40_ROOT:-runs/study_all40}"
ROOT="$ALL40_ROOT" report refit_safeguard/forty_seeds "$(seq -s, 0 39)" mlp_16,lenet_2 mlp_256,mlp_1024 "$REFIT_ARMS"
# Where the gain comes from (2026-12-05): the refit's policies, as second runs of the default's
# first run, and the top-wear cluster masked from the first step, on seeds 0-9 (TRADE_ROOT: the
# results.jsonl of runs/study_a and runs/study_b once they had finished, with the tllm_refit
# records of REJUDGED_ROOT and the tllm_refit_class_mean records that
# `refit_safeguard/rejudge.py --second=tllm_two_pass_class_mean --guarded=tllm_refit_class_mean`
# wrote).
TRADE_ROOT="${TRADE_ROOT:-runs/study_trade}"
ROOT="$TRADE_ROOT" report trade "$ALL" mlp_16,lenet_2 mlp_256,mlp_1024 kd,tllm_patience2,tllm_two_pass_soft_label,tllm_two_pass_class_mean,tllm_two_pass_batch_soft_label,tllm_two_pass_soft_label_exclude,tllm_two_pass_soft_label_symmetric,soft_label_topwear,hard_label_topwear,soft_label_all
ROOT="$TRADE_ROOT" report class_mean "$ALL" mlp_16,lenet_2 mlp_256,mlp_1024 kd,tllm_patience2,tllm_refit,tllm_refit_class_mean,tllm_soft_label_masked_pullover,tllm_class_mean_masked_pullover,tllm_soft_label_masked_coat_sneaker,tllm_class_mean_masked_coat_sneaker,tllm_soft_label_masked_pullover_sneaker,tllm_class_mean_masked_pullover_sneaker
# ... and the cluster on the fresh seeds 30-39 (FRESH40_ROOT, concatenated again once these runs
# had finished).
ROOT="$FRESH40_ROOT" report trade_fresh "$(seq -s, 30 39)" mlp_16,lenet_2 mlp_256,mlp_1024 kd,tllm_patience2,tllm_refit,soft_label_topwear,hard_label_topwear
# Where KD helps (2026-12-05): the second recipe, 1,000 labelled images for 60 epochs
# (configs/study_fashion_few_labels.flags), seeds 0-9, the default against KD and labels
# (FEW_ROOT: the results.jsonl of runs/study_few_a and runs/study_few_b concatenated).
FEW_ROOT="${FEW_ROOT:-runs/study_few}"
FLAGFILE=configs/study_fashion_few_labels.flags
ROOT="$FEW_ROOT" report few_labels "$ALL" mlp_16,lenet_2 mlp_64,mlp_256,mlp_1024 kd,tllm_refit,unpaired
# ... without seed 0, the one-seed pilot that chose the recipe.
ROOT="$FEW_ROOT" report few_labels_after_pilot 1,2,3,4,5,6,7,8,9 mlp_16,lenet_2 mlp_64,mlp_256,mlp_1024 kd,tllm_refit,unpaired
# ... and with a held-out split of 1,000 images (100 a class) instead of 6,000, the mlp_256 teacher
# (SMALL_HOLDOUT_ROOT: runs/study_few_small_holdout_a and _b concatenated).
SMALL_HOLDOUT_ROOT="${SMALL_HOLDOUT_ROOT:-runs/study_few_small_holdout}"
EXTRA_FLAGS="$BEFORE --holdout_fraction=0.016667" ROOT="$SMALL_HOLDOUT_ROOT" report few_labels_small_holdout "$ALL" mlp_16 mlp_256 kd,tllm_refit
# Ten looks (2026-12-05, late morning): the default looking every third epoch of the 60 (ten
# updates, as in the base setting) against every epoch (thirty), a second execution of the same
# seeds on a fresh machine (LOOKS_ROOT: runs/few_looks_a and runs/few_looks_b concatenated); the
# choice on seeds 0-4, its confirmation on 5-9, and the ten.
LOOKS_ROOT="${LOOKS_ROOT:-runs/few_looks}"
LOOKS_ARMS=kd,tllm_refit,tllm_refit_every3
ROOT="$LOOKS_ROOT" report ten_looks_selection 0,1,2,3,4 mlp_16,lenet_2 mlp_64,mlp_256,mlp_1024 "$LOOKS_ARMS"
ROOT="$LOOKS_ROOT" report ten_looks_confirmation 5,6,7,8,9 mlp_16,lenet_2 mlp_64,mlp_256,mlp_1024 "$LOOKS_ARMS"
ROOT="$LOOKS_ROOT" report ten_looks "$ALL" mlp_16,lenet_2 mlp_64,mlp_256,mlp_1024 "$LOOKS_ARMS"
# ... five fresh seeds run after the choice (LOOKS_FRESH_ROOT: runs/few_fresh_a and _b
# concatenated), and the fifteen seeds (LOOKS15_ROOT: LOOKS_ROOT and LOOKS_FRESH_ROOT concatenated).
LOOKS_FRESH_ROOT="${LOOKS_FRESH_ROOT:-runs/few_fresh}"
ROOT="$LOOKS_FRESH_ROOT" report ten_looks_fresh 10,11,12,13,14 mlp_16,lenet_2 mlp_64,mlp_256,mlp_1024 "$LOOKS_ARMS"
LOOKS15_ROOT="${LOOKS15_ROOT:-runs/few_15}"
ROOT="$LOOKS15_ROOT" report ten_looks_15_seeds "$(seq -s, 0 14)" mlp_16,lenet_2 mlp_64,mlp_256,mlp_1024 "$LOOKS_ARMS"
# The base setting's flag file again, for every table below.
FLAGFILE=configs/study_fashion.flags
# The base setting with T = 2 and label and distillation weights 0.5 and 0.5 (the other candidate
# of the second recipe's pilot), the default against KD, seeds 0-9 (T2_ROOT: runs/t2_a and
# runs/t2_b concatenated).
T2_ROOT="${T2_ROOT:-runs/t2}"
FLAGFILE=configs/study_fashion.flags EXTRA_FLAGS="$BEFORE --temperature=2 --alpha=0.5 --beta=0.5" ROOT="$T2_ROOT" report t2 "$ALL" mlp_16,lenet_2 mlp_64,mlp_256,mlp_1024 kd,tllm_refit
# ... ten fresh seeds 10-19 of the two settings with the most false alarms, the CNN and the
# mlp_1024 teacher (T2_FRESH_ROOT: runs/t2f_a and runs/t2f_b concatenated), and their twenty seeds
# (T2_20_ROOT: T2_ROOT and T2_FRESH_ROOT concatenated).
T2_FRESH_ROOT="${T2_FRESH_ROOT:-runs/t2f}"
T2_20_ROOT="${T2_20_ROOT:-runs/t2_20}"
FLAGFILE=configs/study_fashion.flags EXTRA_FLAGS="$BEFORE --temperature=2 --alpha=0.5 --beta=0.5" ROOT="$T2_FRESH_ROOT" report t2_fresh "$(seq -s, 10 19)" mlp_16,lenet_2 mlp_256,mlp_1024 kd,tllm_refit
FLAGFILE=configs/study_fashion.flags EXTRA_FLAGS="$BEFORE --temperature=2 --alpha=0.5 --beta=0.5" ROOT="$T2_20_ROOT" report t2_20_seeds "$(seq -s, 0 19)" mlp_16,lenet_2 mlp_256,mlp_1024 kd,tllm_refit
# A second execution of the base setting's default on a fresh machine (2026-12-05, midday): seeds
# 0-9, the mlp_16 student with the three MLP teachers, the CNN with mlp_256 (BASE2_ROOT: runs/base_a
# and runs/base_b concatenated).
BASE2_ROOT="${BASE2_ROOT:-runs/base}"
ROOT="$BASE2_ROOT" report base_second_execution "$ALL" mlp_16,lenet_2 mlp_64,mlp_256,mlp_1024 kd,tllm_refit
# ... ten fresh seeds 10-19 of the same (2026-12-05, afternoon; BASE_FRESH_ROOT: runs/basef_a and
# runs/basef_b concatenated), and the twenty (BASE20_ROOT: BASE2_ROOT and BASE_FRESH_ROOT
# concatenated).
BASE_FRESH_ROOT="${BASE_FRESH_ROOT:-runs/basef}"
BASE20_ROOT="${BASE20_ROOT:-runs/base20}"
ROOT="$BASE_FRESH_ROOT" report base_fresh "$(seq -s, 10 19)" mlp_16,lenet_2 mlp_64,mlp_256,mlp_1024 kd,tllm_refit
ROOT="$BASE20_ROOT" report base_20_seeds "$(seq -s, 0 19)" mlp_16,lenet_2 mlp_64,mlp_256,mlp_1024 kd,tllm_refit
# Prior offsets (2026-12-05, afternoon): the stored students of those roots with --prior_offsets'
# offsets added by prior_offsets/apply.py (OFFSETS_ROOT: runs/base_offsets from runs/base_a and _b;
# OFFSETS_FRESH_ROOT: runs/basef_offsets from runs/basef_a and _b; OFFSETS20_ROOT: the two
# concatenated); the study's report of them, and each against itself without offsets
# (prior_offsets/compare.py). prior_offsets/choice.md is choose.py's (about 10 minutes).
OFFSETS_ROOT="${OFFSETS_ROOT:-runs/base_offsets}"
OFFSETS_FRESH_ROOT="${OFFSETS_FRESH_ROOT:-runs/basef_offsets}"
OFFSETS20_ROOT="${OFFSETS20_ROOT:-runs/base20_offsets}"
compare() {  # compare OUT_NAME PLAIN_ROOT OFFSETS_ROOT [DEFAULT_ARM]
    if [ -f "$2/results.jsonl" ] && [ -f "$3/results.jsonl" ]; then
        "$PYTHON" results/study_fashion/prior_offsets/compare.py --plain="$2/results.jsonl" \
            --offsets="$3/results.jsonl" --classes=T-shirt/top,Pullover,Dress,Coat,Shirt \
            --default_arm="${4:-tllm_refit}" > "results/study_fashion/prior_offsets/$1.md"
        echo "results/study_fashion/prior_offsets/$1.md"
    else
        echo "results/study_fashion/prior_offsets/$1.md: left as it is (no $2 or $3)"
    fi
}
# The four base settings with offsets, seeds 0-9, 10-19 and the twenty, each reported and paired
# with the base setting without them on the same seeds.
with_offsets() {  # with_offsets PREFIX FLAGS ROOT_0_9 ROOT_10_19 ROOT_20
    SETTINGS="mlp_16,lenet_2 mlp_64,mlp_256,mlp_1024 kd,tllm_refit"
    EXTRA_FLAGS="$2" ROOT="$3" report "prior_offsets/${1}selection" "$ALL" $SETTINGS
    EXTRA_FLAGS="$2" ROOT="$4" report "prior_offsets/${1}confirmation" "$(seq -s, 10 19)" $SETTINGS
    EXTRA_FLAGS="$2" ROOT="$5" report "prior_offsets/${1}twenty_seeds" "$(seq -s, 0 19)" $SETTINGS
    compare "${1}compare_seeds_0_9" "$BASE2_ROOT" "$3"
    compare "${1}compare_seeds_10_19" "$BASE_FRESH_ROOT" "$4"
    compare "${1}compare_20_seeds" "$BASE20_ROOT" "$5"
}
with_offsets "" "--prior_offsets --norule_prior_offsets" "$OFFSETS_ROOT" "$OFFSETS_FRESH_ROOT" "$OFFSETS20_ROOT"
# The rule judged after offsets, the default since 2026-12-05 (afternoon): trained through the
# pipeline with --prior_offsets --rule_prior_offsets, seeds 0-9 (RULE_ROOT: runs/ro_a and runs/ro_b
# concatenated), the fresh seeds 10-19 (RULE_FRESH_ROOT: runs/rof_a and _b) and the twenty
# (RULE20_ROOT: the two concatenated); each paired with the default of before on the same seeds
# (compare.py's rows "default: with offsets minus without" then compare the two defaults).
RULE_ROOT="${RULE_ROOT:-runs/ro}"
RULE_FRESH_ROOT="${RULE_FRESH_ROOT:-runs/rof}"
RULE20_ROOT="${RULE20_ROOT:-runs/ro20}"
RULE_FLAGS="--prior_offsets --rule_prior_offsets"
with_offsets rule_ "$RULE_FLAGS" "$RULE_ROOT" "$RULE_FRESH_ROOT" "$RULE20_ROOT"
# The default of now at T = 2 (2026-12-05, evening): seeds 0-9 through the pipeline with the
# third setting's flags (T2O_ROOT: runs/t2o_a and runs/t2o_b concatenated), and paired with the
# default of before on the same seeds (T2_ROOT).
T2O_ROOT="${T2O_ROOT:-runs/t2o}"
EXTRA_FLAGS="$RULE_FLAGS --temperature=2 --alpha=0.5 --beta=0.5" ROOT="$T2O_ROOT" report prior_offsets/t2_default "$ALL" mlp_16,lenet_2 mlp_256,mlp_1024 kd,tllm_refit
compare t2_default/compare "$T2_ROOT" "$T2O_ROOT"
# A held-out split three times as large (1,800 images a class), the default of now, the mlp_16
# student with the three teachers and the CNN with mlp_256: seeds 0-9 (HOLD30_ROOT: runs/hold30,
# the mlp_1024 teacher and the CNN, and runs/hold30m_a and runs/hold30m_b, the other two teachers,
# concatenated), fresh seeds 10-19 (HOLD30_FRESH_ROOT: runs/hold30f_a, runs/hold30f_b,
# runs/hold30mf_a and runs/hold30mf_b concatenated) and the twenty (HOLD30_20_ROOT: the two).
HOLD30_ROOT="${HOLD30_ROOT:-runs/hold30_0_9}"
HOLD30_FRESH_ROOT="${HOLD30_FRESH_ROOT:-runs/hold30_10_19}"
HOLD30_20_ROOT="${HOLD30_20_ROOT:-runs/hold30_20}"
HOLD30_SETTINGS="mlp_16,lenet_2 mlp_64,mlp_256,mlp_1024 kd,tllm_refit"
EXTRA_FLAGS="$RULE_FLAGS --holdout_fraction=0.3" ROOT="$HOLD30_ROOT" report prior_offsets/holdout_30 "$ALL" $HOLD30_SETTINGS
EXTRA_FLAGS="$RULE_FLAGS --holdout_fraction=0.3" ROOT="$HOLD30_FRESH_ROOT" report prior_offsets/holdout_30_fresh "$(seq -s, 10 19)" $HOLD30_SETTINGS
EXTRA_FLAGS="$RULE_FLAGS --holdout_fraction=0.3" ROOT="$HOLD30_20_ROOT" report prior_offsets/holdout_30_twenty_seeds "$(seq -s, 0 19)" $HOLD30_SETTINGS
# The default of now in the second recipe (2026-12-05, evening): seeds 0-9 (FEWO_ROOT: runs/fewo_a
# and runs/fewo_b concatenated), paired with the default of before on the same seeds (LOOKS_ROOT).
FEWO_ROOT="${FEWO_ROOT:-runs/fewo}"
FLAGFILE=configs/study_fashion_few_labels.flags EXTRA_FLAGS="$RULE_FLAGS" ROOT="$FEWO_ROOT" report prior_offsets/few_labels_default "$ALL" mlp_16,lenet_2 mlp_64,mlp_256,mlp_1024 kd,tllm_refit_every3
compare few_labels_default/compare "$LOOKS_ROOT" "$FEWO_ROOT" tllm_refit_every3
# The price of a larger held-out split where every model learns from all the training images
# outside it (2026-12-06): --num_train=60000 --teacher_num_train=0, the mlp_16 student and the
# mlp_1024 teacher, seeds 0-14 at --holdout_fraction=0.1 (FULL_H10_ROOT: runs/full_h10) and at 0.3
# (FULL_H30_ROOT: runs/full_h30); each reported, and the two paired by seed (holdout_price.py).
FULL_H10_ROOT="${FULL_H10_ROOT:-runs/full_h10}"
FULL_H30_ROOT="${FULL_H30_ROOT:-runs/full_h30}"
FULL_FLAGS="$RULE_FLAGS --num_train=60000 --teacher_num_train=0"
EXTRA_FLAGS="$FULL_FLAGS --holdout_fraction=0.1" ROOT="$FULL_H10_ROOT" report prior_offsets/all_images_holdout_10 "$(seq -s, 0 14)" mlp_16 mlp_1024 kd,tllm_refit
EXTRA_FLAGS="$FULL_FLAGS --holdout_fraction=0.3" ROOT="$FULL_H30_ROOT" report prior_offsets/all_images_holdout_30 "$(seq -s, 0 14)" mlp_16 mlp_1024 kd,tllm_refit
PRICE_MD=results/study_fashion/prior_offsets/holdout_price.md
if [ -f "$FULL_H10_ROOT/results.jsonl" ] && [ -f "$FULL_H30_ROOT/results.jsonl" ]; then
    "$PYTHON" results/study_fashion/prior_offsets/holdout_price.py \
        --first="$FULL_H10_ROOT/results.jsonl" --second="$FULL_H30_ROOT/results.jsonl" \
        --first_name=0.1 --second_name=0.3 --seed_sets=0-9,10-14,0-14 \
        --classes=T-shirt/top,Pullover,Dress,Coat,Shirt > "$PRICE_MD"
    echo "$PRICE_MD"
else
    echo "$PRICE_MD: left as it is (no $FULL_H10_ROOT or $FULL_H30_ROOT)"
fi
# The label-only reference as a fallback (2026-12-06): every stored kd and default student of the
# default-of-now studies judged against its reference on the held-out split, as
# --reference_fallback judges in the stages (prior_offsets/reference_fallback.py; its per-seed
# rows, about 20 minutes from the roots named in it, are committed beside the tables).
FALLBACK=results/study_fashion/prior_offsets/reference_fallback
fallback() {  # fallback NAME SEED_SETS [DEFAULT_ARM]; LEVEL: the level to judge at (0.05)
    "$PYTHON" results/study_fashion/prior_offsets/reference_fallback.py --rows="$FALLBACK/$1.jsonl" \
        --seed_sets="$2" --default_arm="${3:-tllm_refit}" --significance="${LEVEL:-0.05}" \
        > "$FALLBACK/$1${LEVEL:+_at_$LEVEL}.md"
    echo "$FALLBACK/$1${LEVEL:+_at_$LEVEL}.md"
}
# The classes KD hurts, with the fallback (the default since 2026-12-06): each seed's default
# student given the label-only student's per-class accuracies where it fell back (the rows above)
# and the study's records; the classes chosen on the table's own seeds, or on earlier seeds
# (HURT_SEEDS), which the label-only student's luck on the test split cannot favour.
per_class() {  # per_class NAME ROWS RESULTS SEED_SETS [DEFAULT_ARM] [HURT_SEEDS]
    OUT="$FALLBACK/per_class_$1${LEVEL:+_at_$LEVEL}.md"
    for results in $(echo "$3" | tr , ' '); do
        if [ ! -f "$results" ]; then echo "$OUT: left as it is (no $results)"; return; fi
    done
    "$PYTHON" results/study_fashion/prior_offsets/fallback_per_class.py --rows="$2" \
        --results="$3" --seed_sets="$4" --default_arm="${5:-tllm_refit}" \
        --significance="${LEVEL:-0.05}" ${6:+--hurt_seeds="$6"} > "$OUT"
    echo "$OUT"
}
# Thirty more fresh seeds of the base recipe, each ten trained through the stages without the
# fallback (the study's flag file) and judged: 20-29 for the fallback, 30-39 once it was the
# default and 40-49 for its level, the last two with the prediction written before they ran
# (reference_fallback/prediction_seeds_*.md); each root, FRESH_RUNS/freshNN (FRESH_RUNS: runs),
# is runs/freshNN_a and runs/freshNN_b concatenated. The classes KD hurts are chosen on the seeds
# before each ten.
FRESH_RUNS="${FRESH_RUNS:-runs}"
for SEEDS in 20_29 30_39 40_49; do
    FIRST="${SEEDS%_*}"
    EXTRA_FLAGS="$RULE_FLAGS" ROOT="$FRESH_RUNS/fresh$FIRST" report "prior_offsets/rule_seeds_$SEEDS" \
        "$(seq -s, "$FIRST" "${SEEDS#*_}")" mlp_16,lenet_2 mlp_64,mlp_256,mlp_1024 kd,tllm_refit
done
ROWS="$FALLBACK/base.jsonl,$FALLBACK/base_seeds_20_29.jsonl,$FALLBACK/base_seeds_30_39.jsonl,$FALLBACK/base_seeds_40_49.jsonl"
RESULTS="$RULE20_ROOT/results.jsonl,$FRESH_RUNS/fresh20/results.jsonl,$FRESH_RUNS/fresh30/results.jsonl,$FRESH_RUNS/fresh40/results.jsonl"
fallback_tables() {  # Every fallback table, at LEVEL.
    fallback base 0-9,10-19,0-19
    fallback base_seeds_20_29 20-24,25-29,20-29
    fallback base_seeds_30_39 30-34,35-39,30-39
    fallback holdout_30 0-9,10-19,0-19
    fallback t2 0-9
    fallback few_labels 0-9 tllm_refit_every3
    fallback all_images_holdout_10 0-9,10-14,0-14
    fallback all_images_holdout_30 0-9,10-14,0-14
    per_class base "$FALLBACK/base.jsonl" "$RULE20_ROOT/results.jsonl" 0-19
    per_class seeds_20_29 "$ROWS" "$RESULTS" 20-29 tllm_refit 0-19
    per_class seeds_30_39 "$ROWS" "$RESULTS" 30-39 tllm_refit 0-29
    per_class holdout_30 "$FALLBACK/holdout_30.jsonl" "$HOLD30_20_ROOT/results.jsonl" 0-19
    per_class t2 "$FALLBACK/t2.jsonl" "$T2O_ROOT/results.jsonl" 0-9
    per_class few_labels "$FALLBACK/few_labels.jsonl" "$FEWO_ROOT/results.jsonl" 0-9 tllm_refit_every3
    per_class all_images_holdout_10 "$FALLBACK/all_images_holdout_10.jsonl" "$FULL_H10_ROOT/results.jsonl" 0-14
    per_class all_images_holdout_30 "$FALLBACK/all_images_holdout_30.jsonl" "$FULL_H30_ROOT/results.jsonl" 0-14
}
# The fallback judged at the rule's level, 0.05 (its first default), and again at 0.2 from the
# rows' stored p-values (its own level since 2026-12-05, night: docs/study.md, "The fallback's
# level"); seeds 40-49 were judged at both only.
for LEVEL in "" 0.2; do
    fallback_tables
    fallback base_seeds_40_49 40-49
    per_class seeds_40_49 "$ROWS" "$RESULTS" 40-49 tllm_refit 0-39
done
# The refit's safeguard judged at other levels than the rule's 0.05 (2026-12-06), from the p-values
# and test accuracies the default's two students stored in the halves of the roots above (their
# students' folders, under HALVES: runs); nothing trained.
HALVES="${HALVES:-runs}"
REFIT_LEVEL_MD=results/study_fashion/prior_offsets/refit_level.md
h() { echo "$@" | sed "s#[^,]*#$HALVES/&#g"; }
if [ -d "$HALVES/ro_a" ] && [ -d "$HALVES/fresh40_b" ] && [ -d "$HALVES/full_h30" ]; then
    "$PYTHON" results/study_fashion/prior_offsets/refit_level.py --levels=0.05,0.2,0.5 \
        "base, 600 a class (0-49)=$(h ro_a,ro_b,rof_a,rof_b,fresh20_a,fresh20_b,fresh30_a,fresh30_b,fresh40_a,fresh40_b)" \
        "base, 1,800 a class (0-19)=$(h hold30,hold30m_a,hold30m_b,hold30f_a,hold30f_b,hold30mf_a,hold30mf_b)" \
        "T = 2 (0-9)=$(h t2o_a,t2o_b)" \
        "1,000 labels (0-9)=tllm_refit_every3:$(h fewo_a,fewo_b)" \
        "every image, 0.1 held out (0-14)=$(h full_h10)" \
        "every image, 0.3 held out (0-14)=$(h full_h30)" > "$REFIT_LEVEL_MD"
    echo "$REFIT_LEVEL_MD"
else
    echo "$REFIT_LEVEL_MD: left as it is (the halves of the roots are not under $HALVES)"
fi
# A stronger teacher (2026-12-06): a CNN teacher, lenet_32 (89.6%), with both students, seeds 0-9
# (STRONG_ROOT: runs/strong_a and runs/strong_b concatenated), the prediction committed before the
# runs (strong_teacher/prediction.md); the fallback judged from the stored students as above, at
# the rule's level and at the fallback's.
STRONG_ROOT="${STRONG_ROOT:-runs/strong}"
EXTRA_FLAGS="$RULE_FLAGS" ROOT="$STRONG_ROOT" report strong_teacher "$ALL" mlp_16,lenet_2 lenet_32 kd,tllm_refit
for LEVEL in "" 0.2; do
    fallback strong_teacher 0-9
    per_class strong_teacher "$FALLBACK/strong_teacher.jsonl" "$STRONG_ROOT/results.jsonl" 0-9
done
# The classes KD hurts counted again with Holm's correction across the classes (2026-12-06,
# evening): from the study.json summaries and the per-class tables at 0.2 above; nothing trained.
HURT_RECOUNT_MD="$FALLBACK/hurt_recount.md"
"$PYTHON" results/study_fashion/prior_offsets/hurt_recount.py > "$HURT_RECOUNT_MD"
echo "$HURT_RECOUNT_MD"
# A test on calibrated probabilities (2026-12-07): the KD and label-only students of runs/score_a
# and runs/score_b (--arms=kd, seeds 0-19), read again without training (their logits cached in
# runs/score_cache); the two-pass students' rows are kept in calibrated/rows.jsonl, which
# calibrated_refit.py --report_only tabulates.
CALIBRATED="results/study_fashion/prior_offsets/calibrated"
if [ -f runs/score_a/results.jsonl ] && [ -f runs/score_b/results.jsonl ]; then
    {
        echo "# Would a paired test on per-image probabilities see KD's per-class harm that counts miss? (twenty seeds)"
        echo
        echo "Generated by \`.venv/bin/python results/study_fashion/prior_offsets/score_power.py --cache=runs/score_cache runs/score_a runs/score_b\` from the stored KD and label-only students of the study run with \`--arms=kd\` (docs/study.md, \"A test on calibrated probabilities\"). Held-out split: 600 images a class; one-sided tests, Holm's correction over the ten classes."
        echo
        "$PYTHON" results/study_fashion/prior_offsets/score_power.py --cache=runs/score_cache \
            runs/score_a runs/score_b
    } > "$CALIBRATED/score_power.md"
    "$PYTHON" results/study_fashion/prior_offsets/calibrated_refit.py --report_only \
        --cache=runs/score_cache --out="$CALIBRATED/rows.jsonl" --workdirs=runs/calibrated_refit \
        runs/score_a runs/score_b > "$CALIBRATED/calibrated_refit.md"
    echo "$CALIBRATED/score_power.md $CALIBRATED/calibrated_refit.md"
else
    echo "$CALIBRATED: left as it is (runs/score_a and runs/score_b are not there)"
fi
# The calibrated rule through the library (docs/study.md, "The calibrated rule in the library"):
# its own script, from runs/cal and the twenty seeds above.
if [ -d runs/cal ] && [ -d runs/score_a ] && [ -d runs/score_b ]; then
    PYTHON="$PYTHON" sh results/study_fashion/calibrated_rule/regenerate.sh runs/cal \
        runs/score_a runs/score_b
else
    echo "results/study_fashion/calibrated_rule: left as it is (runs/cal, runs/score_a or runs/score_b is not there)"
fi
# Capped scores, and the capped rule with the fallback and in two more recipes (docs/study.md):
# runs/cal, runs/fresh and the twenty seeds above, with their cached logits (the two recipes'
# roots, runs/few_cap and runs/t2cap, are left as they are when missing).
if [ -d runs/cal ] && [ -d runs/fresh ] && [ -d runs/score_a ] && [ -d runs/score_b ] \
        && [ -d runs/score_cache ]; then
    PYTHON="$PYTHON" sh results/study_fashion/capped_rule/regenerate.sh runs/cal runs/fresh \
        runs/score_a runs/score_b
else
    echo "results/study_fashion/capped_rule: left as it is (runs/cal, runs/fresh, runs/score_a, runs/score_b or runs/score_cache is not there)"
fi
# The one hurt class the default did not recover, on twenty more seeds (docs/study.md): runs/t2m
# (seeds 10-19) and runs/t2cap (seeds 0-9).
if [ -f runs/t2m/results.jsonl ] && [ -f runs/t2cap/results.jsonl ]; then
    PYTHON="$PYTHON" sh results/study_fashion/t2_cnn_mlp1024/regenerate.sh runs/t2m runs/t2cap
else
    echo "results/study_fashion/t2_cnn_mlp1024: left as it is (runs/t2m or runs/t2cap is not there)"
fi
