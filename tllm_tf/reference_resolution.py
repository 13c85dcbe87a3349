"""What `UndistillableClassCallback` compares the student with: the reference, resolved.

A reference comes as a model, a `ReferencePredictions`, a reference file (with
or without its predictions file beside it) or an array of per-class
accuracies. `resolve_reference` turns any of them, once per fit, into the
per-class accuracy rows the rule reads and, where there are any, the
reference's per-image results that the paired rule needs; it decides which
rule can be used and whether the comparison is epoch-matched.
"""

import dataclasses
import logging
import os

import keras
import numpy as np

from tllm_tf import calibration
from tllm_tf import held_out_predictions as predictions_lib
from tllm_tf import identification
from tllm_tf import metrics as metrics_lib
from tllm_tf import reference as reference_lib


@dataclasses.dataclass(frozen=True)
class ResolvedReference:
    """The reference as the rule reads it.

    Attributes:
        history: float64 `(rows, num_classes)`: per-class held-out accuracy,
            one row per epoch when `matched`, else one row (the finished
            reference).
        predictions: the per-image results (`ReferencePredictions`), or
            `None` when only accuracies are known or the rule reads only
            those (the unpaired rule).
        source: where the predictions came from, for messages.
        matched: whether epoch `e` is compared with the reference's epoch `e`.
        with_offsets: whether the student is judged after prior offsets, as
            the predictions were recorded.
        rule: the rule that judges: the one asked for, or the unpaired rule
            where that one needs per-image results and there are none.
    """

    history: np.ndarray
    predictions: object
    source: str
    matched: bool
    with_offsets: bool
    rule: str


def resolve_reference(reference, validation_data, num_classes, held_out_counts, *, rule,
                      epoch_matched, prior_offsets):
    """Resolves a callback's `reference` for one fit.

    Args:
        reference: as `UndistillableClassCallback` takes it.
        validation_data: the held-out dataset (a reference model is
            evaluated on it).
        num_classes: the model's number of classes.
        held_out_counts: held-out images per class (a NaN accuracy is refused
            where the split has images).
        rule: the rule asked for, one of `identification.RULES`.
        epoch_matched: as the callback takes it (`None`: whenever the
            reference has per-epoch results).
        prior_offsets: as the callback takes it.

    Returns:
        A `ResolvedReference`. Asked for the paired rule with per-class
        accuracies only, it falls back to the unpaired rule, with a warning;
        asked for the unpaired rule with per-image results, it reads their
        per-class accuracies.

    Raises:
        ValueError: on a reference of the wrong shape or classes, accuracies
            out of range, `epoch_matched=True` without per-epoch results, or
            prior offsets that disagree with how the predictions were
            recorded.
    """
    matched = _wants_matched(reference, rule, epoch_matched)
    predictions, source, history = None, "the reference", None
    if isinstance(reference, keras.Model):
        if matched:
            raise ValueError(
                "epoch_matched=True needs the reference's per-epoch results: "
                "pass a reference file written by the reference stage, a "
                "ReferencePredictions or an (epochs, num_classes) array, not a model.")
        with_offsets = bool(prior_offsets)
        correct, labels, scores = calibration.PerImageScores(
            reference, num_classes, with_offsets=with_offsets)(validation_data)
        predictions = predictions_lib.ReferencePredictions(
            labels=labels, correct=correct[np.newaxis], prior_offsets=with_offsets,
            scores=scores[np.newaxis])
    elif isinstance(reference, predictions_lib.ReferencePredictions):
        predictions = reference
    elif isinstance(reference, (str, os.PathLike)):
        values = (reference_lib.load_reference_history(reference) if matched
                  else reference_lib.load_reference(reference))
        sibling = predictions_lib.sibling_predictions(reference, rule)
        if sibling is not None:
            predictions = predictions_lib.load_predictions(sibling)
            source = sibling
        else:
            history = _accuracy_rows(values, num_classes, matched)
    else:
        history = _accuracy_rows(np.asarray(reference, dtype=np.float64), num_classes, matched,
                                 held_out_counts)
    _check_offsets(predictions, prior_offsets)
    _check_scores(predictions, source, rule)
    if predictions is not None:
        if predictions.labels.size and predictions.labels.max() >= num_classes:
            raise ValueError(
                f"The reference's predictions have labels up to "
                f"{predictions.labels.max()} but the model has num_classes={num_classes}.")
        rows = [metrics_lib.accuracy_from_counts(*metrics_lib.counts_from_correctness(
            row, predictions.labels, num_classes)) for row in predictions.correct]
        history = np.stack(rows) if matched else np.stack(rows[-1:])
    elif identification.reads_per_image_results(rule):
        logging.warning(
            "UndistillableClassCallback: the reference has per-class accuracies only, "
            "so classes are compared with the unpaired rule (noisier: it masks "
            "classes on chance differences). Pass the reference model, or a "
            "reference file with its %s beside it, for the paired test.",
            predictions_lib.PREDICTIONS_FILE)
        rule = "unpaired"
    # Judged as the reference was recorded, unless asked otherwise (refused above).
    with_offsets = predictions is not None and predictions.prior_offsets
    if not identification.reads_per_image_results(rule):
        predictions = None
    return ResolvedReference(history=history, predictions=predictions, source=source,
                             matched=matched, with_offsets=with_offsets, rule=rule)


def _check_scores(predictions, source, rule):
    if (predictions is not None and predictions.scores is None
            and identification.reads_scores(rule)):
        raise ValueError(
            f"rule={rule!r} compares each held-out image's calibrated score, and the "
            f"reference's predictions {source!r} hold none: they were recorded before "
            "scores were. Re-run the reference stage (delete its directory) or record the "
            "reference again with PredictionRecorder, pass the reference model, or use "
            "rule='paired'.")


def _check_offsets(predictions, prior_offsets):
    if prior_offsets and predictions is None:
        raise ValueError(
            "prior_offsets=True judges image by image, so it needs the reference's "
            "held-out predictions (the paired rule): pass a reference file with its "
            f"{predictions_lib.PREDICTIONS_FILE} beside it, a ReferencePredictions or "
            "the reference model, or set prior_offsets=False (--norule_prior_offsets).")
    if (predictions is not None and prior_offsets is not None
            and predictions.prior_offsets != prior_offsets):
        raise ValueError(
            f"The reference's predictions were recorded "
            f"{'with' if predictions.prior_offsets else 'without'} prior offsets, and "
            f"this callback judges {'with' if prior_offsets else 'without'} them "
            f"(prior_offsets={prior_offsets}). Record the reference with "
            f"PredictionRecorder(prior_offsets={prior_offsets}) (the same "
            "--rule_prior_offsets for the reference and the students), or judge as it was "
            "recorded.")


def _wants_matched(reference, rule, epoch_matched):
    """`epoch_matched`, or with `None` whether the reference has per-epoch results."""
    if epoch_matched is not None:
        return epoch_matched
    if isinstance(reference, predictions_lib.ReferencePredictions):
        return len(reference.correct) > 1
    if isinstance(reference, (str, os.PathLike)):
        sibling = predictions_lib.sibling_predictions(reference, rule)
        if sibling is not None:
            return len(predictions_lib.load_predictions(sibling).correct) > 1
        try:
            return len(reference_lib.load_reference_history(reference)) > 1
        except reference_lib.MissingHistoryError:
            return False
    if isinstance(reference, keras.Model):
        return False
    return np.ndim(reference) == 2


def _accuracy_rows(values, num_classes, matched, held_out_counts=None):
    """The reference's accuracy rows from an array, checked.

    `held_out_counts` (per-class held-out images) refuses a NaN where the
    split has images; `None` for a reference file, whose null marks a class
    its own split had none of.
    """
    expected_rank = 2 if matched else 1
    if values.ndim != expected_rank:
        raise ValueError(
            f"Expected a reference of rank {expected_rank} "
            f"({'(epochs, num_classes)' if matched else '(num_classes,)'}) "
            f"with epoch_matched={matched}. Received shape {values.shape}.")
    if values.shape[-1] != num_classes or values.size == 0:
        raise ValueError(
            f"The reference has {values.shape[-1]} per-class accuracies but the "
            f"model has num_classes={num_classes}. Pass the reference of a student "
            "trained on the same classes.")
    rows = values.reshape(-1, num_classes)
    reference_lib.check_accuracy_rows(rows, held_out_counts)
    return rows
