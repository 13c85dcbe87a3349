"""`UndistillableClassCallback`: finds undistillable classes during training.

(Over 300 lines: one Keras callback, more than a third of it its docstring; the rule
itself is `tllm_tf.identification`, the reference's resolution
`tllm_tf.reference_resolution`.)

Teach Less, Learn More (Zhu et al., NeurIPS 2022): a class is undistillable
when the distilled student is less accurate on it than a student trained on
labels alone. Every few epochs this callback measures the student on a
held-out split of the *training* data, compares it with the reference by the
rule of `tllm_tf.identification` (by default a paired exact test per class
with Holm's correction), and sets the `Distiller`'s class mask so those
classes stop being distilled.

What the rule keeps between updates (patience streaks, moving averages, the
sticky set) lives in the `Distiller`'s `identification_state` variable, next
to the class mask: a checkpoint holds both, so a resumed run judges exactly
as an uninterrupted one would.
"""

import dataclasses
import json
import logging

import keras
import numpy as np

from tllm_tf import atomic
from tllm_tf import calibration
from tllm_tf import identification
from tllm_tf import metrics as metrics_lib
from tllm_tf import model_checks
from tllm_tf import prior_offsets as prior_offsets_lib
from tllm_tf import reference_resolution

# Looks the rule takes after the warm-up when `update_every` is not given: the
# number the defaults were chosen with (20 epochs, warm-up 10, one look an
# epoch), kept whatever the schedule so that `patience` and the level per look
# cover the same part of training (docs/study.md, "Ten looks").
DEFAULT_LOOKS = 10


def update_schedule(epochs, warmup_epochs=None, update_every=None):
    """The epochs before the first update and between updates of a fit.

    Args:
        epochs: the fit's number of epochs.
        warmup_epochs: epochs before the first update, or `None` for half of
            `epochs` (rounded down). Defaults to `None`.
        update_every: epochs between updates, or `None` to spread
            `DEFAULT_LOOKS` updates over the epochs after the warm-up (one
            every `(epochs - warmup) // DEFAULT_LOOKS` epochs, at least every
            epoch). Defaults to `None`.

    Returns:
        `(warmup_epochs, update_every)`, both resolved to integers.
    """
    warmup = epochs // 2 if warmup_epochs is None else int(warmup_epochs)
    if update_every is None:
        update_every = max(1, (epochs - warmup) // DEFAULT_LOOKS)
    return warmup, int(update_every)


def scheduled_updates(epochs, warmup_epochs=None, update_every=None, max_updates=None):
    """How many mask updates a fit of `epochs` makes (the arguments as in `update_schedule`).

    Args:
        epochs: the fit's number of epochs.
        warmup_epochs: as in `update_schedule`. Defaults to `None`.
        update_every: as in `update_schedule`. Defaults to `None`.
        max_updates: the most updates made, or `None` for no limit. Defaults
            to `None`.

    Returns:
        The number of updates, `>= 0`.
    """
    warmup, update_every = update_schedule(epochs, warmup_epochs, update_every)
    updates = max(0, epochs - warmup) // update_every
    return updates if max_updates is None else min(updates, max_updates)


class UndistillableClassCallback(keras.callbacks.Callback):
    """Updates a `Distiller`'s class mask from held-out results.

    At the end of epoch `e` (counted from 1), when `e > warmup_epochs` and
    `(e - warmup_epochs) % update_every == 0`, the callback measures which
    held-out images the student classifies correctly and compares it, class
    by class, with the reference (with `epoch_matched` its state after epoch
    `e`, else its finished state):

    - `rule="paired"` (default): per class, `b` = images only the reference
      gets right, `w` = images only the student gets right; the class is
      behind when McNemar's one-sided exact test (`b ~ Binomial(b + w, 1/2)`
      under "no worse") rejects at `significance` after `correction` across
      the classes, and, with `margin > 0`, `(b - w) / n` exceeds it. Needs
      the reference's per-image results: a `keras.Model`, a
      `ReferencePredictions`, or a reference JSON file with its
      predictions file beside it (the reference stage writes both).
    - `rule="paired_calibrated"`: per class, a one-sided paired t-test on
      each image's calibrated probability of its true class (each model at
      the temperature that fits it best on these images), the reference's
      minus the student's, with the same correction and level; with
      `margin > 0` the mean gap must also exceed it. It reads every image
      of a class, not only the discordant ones, and finds smaller harms
      (docs/study.md). Needs the reference's scores: a `keras.Model`, or
      predictions recorded with them (the reference stage and
      `PredictionRecorder` record both).
    - `rule="paired_capped"`: the same test with each probability capped at
      0.9 first, so that an image both models get confidently right is a
      tie: fewer classes masked for a loss of confidence alone, for fewer
      harms found (docs/study.md, "Capped scores").
    - `rule="unpaired"`: the student's accuracy `s[c]` is below the
      reference's `r[c]` by more than `margin + margin_standard_errors *
      se[c]` (see `tllm_tf.identification`). A reference given only as
      per-class accuracies is judged this way, with a warning when the
      paired rule was asked for.

    With `max_updates`, only that many updates are made; the mask then
    stays fixed to the end of the fit.

    A class behind on `patience` consecutive updates is masked (mask 0);
    with `sticky=True` (the default) it stays masked, and each update tests
    at `significance` divided by the fit's number of updates, so that over
    the whole fit a class is wrongly masked with probability at most
    `significance`; with `smoothing > 0` the compared
    quantities are moving averages over updates. A class with fewer than
    `min_samples` held-out images keeps being distilled. When no class is
    behind the mask stays all ones, and the student trains exactly as plain
    KD would.

    `validation_data` must be a held-out split of the *training* data, in a
    fixed order. Never pass the test split: the classes chosen on it would
    shape training, and the test accuracy would no longer measure
    generalisation.

    Classes named in `masked_classes` are masked from the first step to the
    last, whatever the rule finds (the rule may mask others beside them):
    for classes already known to be undistillable, for example the final
    mask of an earlier run of the same setting.

    Every epoch's logs get `num_undistillable_classes`: the number of
    classes the *next* epoch stops distilling (and so does
    `val_num_undistillable_classes`, where validation ran).

    `Distiller.fit` runs this callback before the others at each epoch end,
    so that `BackupAndRestore` and `ModelCheckpoint` save the updated mask.
    Monitor `val_student_loss` or `val_accuracy`, not `val_loss`, in
    `EarlyStopping`, `ModelCheckpoint` or `ReduceLROnPlateau`: the objective
    jumps when a class is masked (a warning says so).

    Args:
        validation_data: batched `tf.data.Dataset` of `(x, y)`, or a tuple
            `(x, y)` of arrays, of held-out *training* examples.
        reference: the label-only student on the same split: a
            `keras.Model` (evaluated once at train begin), a
            `tllm_tf.ReferencePredictions`, the path of a reference JSON
            file (`tllm_tf.save_reference`), or an array `(num_classes,)` of
            per-class accuracies. With `epoch_matched=True`: a
            `ReferencePredictions`, a reference file with per-epoch
            results, or an array `(epochs, num_classes)` (row `i` after
            epoch `i + 1`).
        rule: `"paired"`, `"paired_calibrated"`, `"paired_capped"` or
            `"unpaired"`. Defaults to `"paired"`.
        significance: level of the paired test, in `(0, 1)`: per update,
            or with `sticky=True` for the whole fit. Defaults to `0.05`.
        correction: `"holm"`, `"benjamini_hochberg"` or `"none"`, across
            the classes of one update. Defaults to `"holm"`.
        margin: how far below the reference a class must fall, in accuracy
            units, `>= 0`. Defaults to `0.0`.
        warmup_epochs: epochs before the first update, `>= 0`, or `None`
            for half of the fit's epochs: early in training the distilled
            student and the reference differ for real on classes where the
            final students agree, and a sticky mask would keep those
            (docs/study.md). Equal to the fit's epochs, the mask stays as it
            is; a warm-up that puts the first update after the fit's last
            epoch otherwise is warned about at train begin. Defaults to `None`.
        update_every: epochs between updates, `>= 1`, or `None` to spread
            about ten updates over the epochs after the warm-up (every
            `(epochs - warmup) // 10` epochs, at least every epoch: ten to
            nineteen updates, one per epoch where fewer follow it): a class
            must then be behind for the same part of training to be masked,
            whatever the number of epochs (docs/study.md, "Ten looks").
            Defaults to `None`.
        sticky: whether a masked class stays masked; without it a masked
            class recovers, looks fine, is unmasked and falls again.
            Defaults to `True`.
        min_samples: fewest held-out examples a class needs to be judged,
            `>= 1`. Defaults to `1`.
        log_path: if set, one JSON line per update is appended there.
            Defaults to `None`.
        epoch_matched: whether to compare with the reference at the same
            epoch (its last recorded epoch once the student trains longer);
            `None` does so whenever the reference has per-epoch results
            (a `ReferencePredictions` of several epochs, a reference file
            with them, an array `(epochs, num_classes)`). Defaults to `None`.
        smoothing: weight of the past in the moving averages, in `[0, 1)`.
            Defaults to `0.0`.
        patience: consecutive updates a class must be behind, `>= 1`. A
            half-trained student trails the reference for real on classes
            where the finished students agree; two looks in a row let fewer
            of those through (docs/study.md). Defaults to `2`.
        margin_standard_errors: unpaired rule: extra margin in standard
            errors of the accuracy difference, `>= 0`. Defaults to `0.0`.
        masked_classes: class ids never distilled, masked from the first
            step. Defaults to `()`.
        max_updates: how many updates to make, `>= 1`, after which the mask
            stays as it is to the end of the fit; `None` updates to the end.
            A window closes before a masked class's changed training can
            push its neighbours behind the reference in turn, but on
            Fashion-MNIST three updates did no better than updating to the
            end (docs/study.md). Defaults to `None`.
        prior_offsets: paired rule: judge the student, and a reference given
            as a model, after the prior offsets fitted on the held-out images
            at each look (`tllm_tf.prior_offsets`), so that where a model puts
            its class boundaries does not count as a class behind. A reference
            file must then come from a `PredictionRecorder(prior_offsets=True)`
            (`--rule_prior_offsets` does both, the default of the stages). `None`
            judges as the reference's predictions were recorded (their file says),
            and without offsets for a reference given as a model: pass `True`
            with a stage's `reference/model.keras`, whose weights already hold
            its offsets, so that the student is judged after its own. Defaults
            to `None`.
        epochs: the whole training's epochs, when it is split over several
            `fit` calls (`fit(epochs=e + 1, initial_epoch=e)` in a loop): the
            warm-up, the looks and each look's level are planned over them.
            `None` plans over each fit's `epochs` (as Keras counts them: the
            last epoch, `initial_epoch` included), and warns when a later fit
            has another. Either way, a fit of the same model that counts its
            epochs from 0 again (`fit(epochs=1)` in a loop) is warned about:
            its warm-up and looks start again. Defaults to `None`.

    Raises:
        ValueError: on an argument out of range; at train begin, on a model
            that is not a `Distiller`, a held-out data set that is empty,
            not batched or of other images than the model takes, a fit that
            runs past `epochs`, a class of `masked_classes` the model does
            not have, a held-out label outside `[0, num_classes)`, or a
            reference of the wrong shape, with accuracies outside `[0, 1]`
            or NaN for a class the held-out split has images of, from
            another held-out split, or, with `epoch_matched=True`, one
            without per-epoch results.

    Example:

    >>> distiller.fit(train_ds, epochs=30, callbacks=[
    ...     UndistillableClassCallback(held_out_ds, "runs/x/reference/reference.json",
    ...                                epoch_matched=True, sticky=True)])
    """

    # `Distiller.fit` runs mask updaters first at each epoch end (`tllm_tf.fit_callbacks`).
    updates_class_mask = True

    def __init__(
        self,
        validation_data,
        reference,
        rule="paired",
        significance=0.05,
        correction="holm",
        margin=0.0,
        warmup_epochs=None,
        update_every=None,
        sticky=True,
        min_samples=1,
        log_path=None,
        epoch_matched=None,
        smoothing=0.0,
        patience=2,
        margin_standard_errors=0.0,
        masked_classes=(),
        max_updates=None,
        prior_offsets=None,
        epochs=None,
    ):
        super().__init__()
        masked_classes = tuple(int(c) for c in masked_classes)
        if any(c < 0 for c in masked_classes) or len(set(masked_classes)) < len(masked_classes):
            raise ValueError("Expected distinct class ids >= 0 in masked_classes. "
                             f"Received: masked_classes={list(masked_classes)}")
        if warmup_epochs is not None and warmup_epochs < 0:
            raise ValueError(
                f"Expected warmup_epochs >= 0. Received: warmup_epochs={warmup_epochs}")
        if update_every is not None and update_every < 1:
            raise ValueError(
                f"Expected update_every >= 1. Received: update_every={update_every}")
        if epochs is not None and epochs < 1:
            raise ValueError(f"Expected epochs >= 1 or None. Received: epochs={epochs}")
        if max_updates is not None and max_updates < 1:
            raise ValueError(
                f"Expected max_updates >= 1 or None. Received: max_updates={max_updates}")
        self.options = identification.RuleOptions(
            rule=rule, significance=float(significance), correction=correction,
            margin=float(margin), margin_standard_errors=float(margin_standard_errors),
            smoothing=float(smoothing), patience=int(patience), sticky=bool(sticky),
            min_samples=int(min_samples))
        self.validation_data = metrics_lib.as_dataset(validation_data)
        self.reference = reference
        self.warmup_epochs = None if warmup_epochs is None else int(warmup_epochs)
        self.update_every = None if update_every is None else int(update_every)
        self.max_updates = None if max_updates is None else int(max_updates)
        self.epochs = None if epochs is None else int(epochs)
        # Not reset in `on_train_begin`: they outlive each fit so that the next
        # one can warn when its `epochs` differ (`_planned_epochs`), or when it
        # counts its epochs from 0 again on the same model (`on_epoch_begin`).
        self._last_fit_epochs = None
        self._last_epoch = None
        self._last_model = None
        self._fit_begins = False
        self.prior_offsets = None if prior_offsets is None else bool(prior_offsets)
        self.masked_classes = masked_classes
        self.log_path = log_path
        self.epoch_matched = None if epoch_matched is None else bool(epoch_matched)
        self._warmup, self._update_every = update_schedule(0, self.warmup_epochs, self.update_every)
        self._looks = 1
        self.effective_rule = rule
        self.reference_accuracy = None
        self.student_accuracy = None
        self.p_values = None
        self._resolved = None
        self._correctness = None
        # "Not yet": `on_train_begin` sets both, as `_fixed` needs the model's classes.
        self._fixed = None
        self._labels_checked = False

    # -- Keras hooks -------------------------------------------------------------

    def on_train_begin(self, logs=None):
        """Checks the model and held-out data, resolves the reference, plans the looks."""
        if not hasattr(self.model, "class_mask"):
            raise ValueError(
                "UndistillableClassCallback needs a tllm_tf.Distiller (a model "
                f"with a `class_mask`). Received: {type(self.model).__name__}")
        model_checks.check_held_out_data(self.validation_data, self.model)
        num_classes = self.model.num_classes
        held_out_ids = model_checks.held_out_class_ids(self.validation_data, num_classes)
        held_out_counts = np.bincount(held_out_ids, minlength=num_classes)
        self._mask_fixed_classes(num_classes)
        self._resolved = reference_resolution.resolve_reference(
            self.reference, self.validation_data, num_classes, held_out_counts,
            rule=self.options.rule, epoch_matched=self.epoch_matched,
            prior_offsets=self.prior_offsets)
        self.effective_rule = self._resolved.rule
        if self._resolved.predictions is not None:
            # The passes above read the held-out labels: a split that reshuffles
            # is refused now, not after the warm-up.
            self._resolved.predictions.check_labels(held_out_ids, self._resolved.source)
        epochs = self._planned_epochs()
        self._warmup, self._update_every = update_schedule(
            epochs, self.warmup_epochs, self.update_every)
        if epochs:
            self._warn_if_no_update(epochs)
        # A sticky mask acts on the first significant look, so the level is
        # spent over the fit's planned updates (Bonferroni over time): the
        # chance that a class KD does not hurt is ever masked stays below
        # `significance`. Counted over the whole fit, so a resumed fit agrees.
        self._looks = 1
        if self.options.sticky:
            self._looks = max(1, scheduled_updates(
                epochs, self.warmup_epochs, self.update_every, self.max_updates))
        self.reference_accuracy = self._resolved.history[-1]
        self._warn_about_unlearned_classes(num_classes)
        self.student_accuracy = None
        self.p_values = None
        self._correctness = self._judge(num_classes)
        self._labels_checked = False
        if self.model is not self._last_model:
            self._last_model, self._last_epoch = self.model, None
        self._fit_begins = True

    def _judge(self, num_classes):
        """The per-image judge of the student: the last fit's where it still fits.

        Kept across `fit` calls on the same model, so that its traced pass is reused.
        """
        with_offsets = self._resolved.with_offsets
        previous = self._correctness
        if identification.reads_scores(self.effective_rule):
            if (isinstance(previous, calibration.PerImageScores) and previous.model is self.model
                    and previous.with_offsets == with_offsets):
                return previous
            return calibration.PerImageScores(self.model, num_classes, with_offsets=with_offsets)
        judge = prior_offsets_lib.judge_class(with_offsets)
        if type(previous) is judge and previous.model is self.model:
            return previous
        return judge(self.model, num_classes)

    def on_epoch_begin(self, epoch, logs=None):
        """Warns when a fit counts its epochs from 0 again on a model already trained."""
        if not self._fit_begins:
            return
        self._fit_begins = False
        if self._last_epoch is None or epoch > self._last_epoch:
            return
        logging.warning(
            "UndistillableClassCallback: this fit starts at epoch %d, but the last fit of "
            "this model ran to epoch %d. Keras counts each fit's epochs from its "
            "initial_epoch, so the warm-up and the looks start again (fit(epochs=1) in a loop "
            "never gets past the warm-up, or looks after every fit at the whole level). To "
            "continue one training, pass fit(epochs=e + 1, initial_epoch=e) and the whole "
            "training's epochs to the callback (UndistillableClassCallback(..., epochs=TOTAL)).",
            epoch + 1, self._last_epoch + 1)

    def _planned_epochs(self):
        """The epochs of the whole training: `epochs`, else this fit's."""
        fit_epochs = (self.params or {}).get("epochs") or 0
        if self.epochs is not None:
            if fit_epochs > self.epochs:
                raise ValueError(
                    f"This fit runs to epoch {fit_epochs}, past the callback's "
                    f"epochs={self.epochs} (the whole training's): pass the whole "
                    "training's number of epochs to both.")
            return self.epochs
        if self._last_fit_epochs not in (None, fit_epochs):
            logging.warning(
                "UndistillableClassCallback: this fit has epochs=%d, the last one had %d. "
                "The warm-up, the looks and each look's level follow the fit's epochs: for "
                "one training split over several fits (fit(epochs=e + 1, initial_epoch=e) "
                "in a loop), pass the whole training's epochs to the callback "
                "(UndistillableClassCallback(..., epochs=TOTAL)).",
                fit_epochs, self._last_fit_epochs)
        self._last_fit_epochs = fit_epochs
        return fit_epochs

    def _warn_if_no_update(self, epochs):
        """Warns when the warm-up puts the first update after this fit's last epoch.

        A warning, not an error as on the command line: a fit may be one of
        several, e.g. `fit(epochs=1)` called in a loop (each counts its epochs
        from its `initial_epoch`). Not for a fixed mask (`masked_classes`), nor
        for a warm-up of exactly the fit's epochs: both say "keep the mask as
        it is" (the pipeline's tllm_refit student passes `warmup_epochs=epochs`).
        """
        first_update = self._warmup + self._update_every
        if first_update <= epochs or self.masked_classes or self._warmup == epochs:
            return
        logging.warning(
            "UndistillableClassCallback: warmup_epochs=%d and update_every=%d put the first "
            "mask update after epoch %d, but this fit has epochs=%d: the mask will never "
            "change in this fit, and TLLM trains as plain KD. Lower warmup_epochs below the "
            "fit's epochs (or pass initial_epoch to continue an earlier fit's count).",
            self._warmup, self._update_every, first_update, epochs)

    def _warn_about_unlearned_classes(self, num_classes):
        """Warns of classes the finished reference gets right no more often than chance.

        The student is behind such a reference on them only where it does
        worse still, so in effect they are not judged: a failed reference (a
        class it never learned) silently turns TLLM into KD there.
        """
        unlearned = np.flatnonzero(self.reference_accuracy <= 1.0 / num_classes)
        if unlearned.size:
            logging.warning(
                "UndistillableClassCallback: the reference gets classes %s right on no more "
                "than chance (%.0f%%) of their held-out images (%s): it has not learned them, "
                "so the student is behind it there only where it does worse still, and they are "
                "in effect not judged. Train the "
                "reference again (another seed, or a lower learning rate) to judge them.",
                unlearned.tolist(), 100.0 / num_classes,
                ", ".join(f"{100 * a:.0f}%" for a in self.reference_accuracy[unlearned]))

    def _mask_fixed_classes(self, num_classes):
        outside = [c for c in self.masked_classes if c >= num_classes]
        if outside:
            raise ValueError(
                f"masked_classes names classes {outside} that the model does not have: it has "
                f"{num_classes} classes, ids 0 to {num_classes - 1}. Pass ids of its classes.")
        fixed = np.zeros(num_classes, bool)
        fixed[list(self.masked_classes)] = True
        self._fixed = fixed
        if fixed.any():
            mask = keras.ops.convert_to_numpy(self.model.class_mask).copy()
            mask[fixed] = 0.0
            self.model.set_class_mask(mask)

    def _is_update_epoch(self, epoch):
        since_warmup = epoch + 1 - self._warmup
        if since_warmup <= 0 or since_warmup % self._update_every:
            return False
        return self.max_updates is None or since_warmup // self._update_every <= self.max_updates

    def _evidence(self, epoch, correct, labels, scores, num_classes):
        hits, total = metrics_lib.counts_from_correctness(correct, labels, num_classes)
        self.student_accuracy = metrics_lib.accuracy_from_counts(hits, total)
        matched = self._resolved.matched
        row = min(epoch, len(self._resolved.history) - 1) if matched else -1
        self.reference_accuracy = self._resolved.history[row]
        if not identification.reads_per_image_results(self.effective_rule):
            return identification.Evidence(total, self.student_accuracy, self.reference_accuracy)
        predictions = self._resolved.predictions
        if not self._labels_checked:
            predictions.check_labels(labels, self._resolved.source)
            self._labels_checked = True
        reference_correct = (predictions.at_epoch(epoch) if matched
                             else predictions.final)
        behind, ahead = identification.discordant_counts(
            correct, reference_correct, labels, num_classes)
        score_gaps = None
        if scores is not None:
            reference_scores = (predictions.scores_at_epoch(epoch) if matched
                                else predictions.scores[-1])
            score_gaps = identification.paired_score_gaps(
                scores, reference_scores, labels, num_classes,
                cap=identification.score_cap(self.effective_rule))
        return identification.Evidence(total, self.student_accuracy, self.reference_accuracy,
                                       behind_counts=behind, ahead_counts=ahead,
                                       score_gaps=score_gaps)

    def on_epoch_end(self, epoch, logs=None):
        """Updates the class mask on a look's epoch; logs the masked-class count."""
        self._last_epoch = epoch
        if self._is_update_epoch(epoch):
            num_classes = self.model.num_classes
            # `(correct, labels)`, and each image's calibrated score where the rule reads them.
            correct, labels, *scores = self._correctness(self.validation_data)
            evidence = self._evidence(epoch, correct, labels, scores[0] if scores else None,
                                      num_classes)
            options = dataclasses.replace(
                self.options, rule=self.effective_rule,
                significance=self.options.significance / self._looks)
            state = identification.IdentificationState.from_array(
                keras.ops.convert_to_numpy(self.model.identification_state))
            state, masked, self.p_values = identification.update(state, evidence, options)
            mask = np.where(masked | self._fixed, 0.0, 1.0).astype(np.float32)
            self.model.identification_state.assign(state.to_array())
            self.model.set_class_mask(mask)
            if self.log_path:
                self._append_log(epoch, evidence, state, mask, options)
        if logs is not None:
            count = len(self.model.undistillable_classes)
            logs["num_undistillable_classes"] = count
            if "val_num_undistillable_classes" in logs:
                # Measured before this update; one count per epoch's line.
                logs["val_num_undistillable_classes"] = count

    def _append_log(self, epoch, evidence, state, mask, options):
        record = {
            "epoch": epoch + 1,
            "rule": self.effective_rule,
            "student_accuracy": atomic.json_floats(evidence.student_accuracy, digits=6),
            "reference_accuracy": atomic.json_floats(evidence.reference_accuracy, digits=6),
            "num_samples": [int(n) for n in evidence.num_samples],
            "class_mask": [float(m) for m in mask],
            "num_undistillable_classes": int(np.sum(mask <= 0.0)),
        }
        if evidence.behind_counts is not None:
            record["behind_counts"] = [int(n) for n in evidence.behind_counts]
            record["ahead_counts"] = [int(n) for n in evidence.ahead_counts]
            record["p_values"] = atomic.json_floats(self.p_values, digits=6)
            # The level this look tested at: the report says how large a gap it could find.
            record["significance_per_look"] = options.significance
            record["correction"] = options.correction
        if evidence.score_gaps is not None:
            record["mean_score_gap"] = atomic.json_floats(evidence.score_gaps[0], digits=6)
            record["score_gap_standard_error"] = atomic.json_floats(evidence.score_gaps[1],
                                                                    digits=6)
        if self.options.smoothing > 0:
            record["smoothed"] = [atomic.json_floats(row, digits=6) for row in state.smoothed]
        atomic.append_line(self.log_path, json.dumps(record))

    def get_config(self):
        """The hyper-parameters only.

        `validation_data` and `reference` are left out, as Keras does not
        serialise callbacks: `UndistillableClassCallback(validation_data,
        reference, **config)` rebuilds it.
        """
        return {
            "rule": self.options.rule,
            "significance": self.options.significance,
            "correction": self.options.correction,
            "margin": self.options.margin,
            "warmup_epochs": self.warmup_epochs,
            "update_every": self.update_every,
            "sticky": self.options.sticky,
            "min_samples": self.options.min_samples,
            "log_path": self.log_path,
            "epoch_matched": self.epoch_matched,
            "smoothing": self.options.smoothing,
            "patience": self.options.patience,
            "margin_standard_errors": self.options.margin_standard_errors,
            "masked_classes": list(self.masked_classes),
            "max_updates": self.max_updates,
            "prior_offsets": self.prior_offsets,
            "epochs": self.epochs,
        }

