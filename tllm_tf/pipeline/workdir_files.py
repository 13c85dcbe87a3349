"""The names of the files and folders in a run's workdir, in one place.

Imports nothing, so that what only reads a workdir (tools/report.py,
`reporting`) loads no TensorFlow. The layout, written by `stages`:

    config.json
    data.json (an image folder: the digests of the files of each split)
    teacher/model.keras, history.csv, test_per_class.json, tensorboard/
    reference/model.keras, reference.json, held_out_predictions.npz,
        per_epoch_accuracy.jsonl, history.csv, test_per_class.json, tensorboard/
    student_kd/, student_tllm/, student_tllm_refit/ (the "distilled", "tllm" and
        "tllm_refit" students): model.keras, saved_model/, history.csv,
        test_per_class.json, mask_log.jsonl (tllm), tensorboard/,
        refit_check.json (tllm_refit: its held-out comparison with the tllm student),
        reference_check.json (with --reference_fallback: the student's held-out
            comparison with the label-only reference),
        model_before_refit_check.keras, model_before_reference_check.keras (only
            when that check replaced the student's weights: the model it judged,
            whose test accuracy the check's JSON records),
        prior_offsets.json (with --prior_offsets; the reference's too)
    <stage>/checkpoint/ (while the stage runs)
    report/ (tools/train.py and tools/report.py)
"""

CONFIG_FILE = "config.json"
DATA_FILE = "data.json"
TEACHER_STAGE = "teacher"
REFERENCE_STAGE = "reference"
# Writes no folder of the workdir: the store lives in --teacher_store.
STORE_STAGE = "store"

MODEL_FILE = "model.keras"
PER_CLASS_FILE = "test_per_class.json"
HISTORY_FILE = "history.csv"
REFERENCE_FILE = "reference.json"
REFERENCE_LOG_FILE = "per_epoch_accuracy.jsonl"
PREDICTIONS_LOG_DIR = "held_out_predictions"
MASK_LOG_FILE = "mask_log.jsonl"
REFIT_CHECK_FILE = "refit_check.json"
REFERENCE_CHECK_FILE = "reference_check.json"
# The student each check judged, saved when the check gives it the baseline's weights.
MODEL_BEFORE_REFIT_CHECK_FILE = "model_before_refit_check.keras"
MODEL_BEFORE_REFERENCE_CHECK_FILE = "model_before_reference_check.keras"
PRIOR_OFFSETS_FILE = "prior_offsets.json"
SAVED_MODEL_DIR = "saved_model"
CHECKPOINT_DIR = "checkpoint"
TENSORBOARD_DIR = "tensorboard"
REPORT_DIR = "report"


# The "distilled" student's folder keeps the name it had when --students was
# --method=kd,tllm, so that workdirs of earlier versions still resume.
_STUDENT_STAGES = {"distilled": "student_kd", "tllm": "student_tllm",
                   "tllm_refit": "student_tllm_refit"}


def student_stage(student):
    """The folder of a distilled student: `"distilled"` -> `"student_kd"`, `"tllm"` -> `"student_tllm"`."""
    return _STUDENT_STAGES[student]
