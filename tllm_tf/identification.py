"""The identification rule: which classes is the distilled student behind on?

(Over 300 lines: the rule's pure functions, its options and its state, one job, most of the
length their docstrings.)

Teach Less, Learn More (Zhu et al., NeurIPS 2022) stops distilling a class
when the distilled student is less accurate on it than a student trained on
labels alone (the *reference*), both measured on a held-out split of the
training data. Held-out per-class accuracy is coarse (one image of fifty is
two points), so the comparison must be a test, not a subtraction.

Four rules, all pure functions of what was measured:

- `"paired"` (the default): the student and the reference are judged on the
  *same* images, so for class `c` count `b` = images the reference gets right
  and the student wrong, and `w` = the reverse. Under "the student is no
  worse", `b ~ Binomial(b + w, 1/2)` (McNemar's exact test); class `c` is
  behind when the one-sided p-value survives a correction for testing every
  class (Holm's step-down by default, or Benjamini-Hochberg).
- `"paired_calibrated"`: the same images, read more finely: per class, a
  one-sided paired t-test on each image's calibrated probability of its true
  class (`tllm_tf.calibration`: each model at the temperature that fits it
  best), the reference's minus the student's, with the same correction. It
  uses every image of the class, not only the few one model gets wrong and
  the other right, so it sees smaller harms (docs/study.md, "A test on
  calibrated probabilities").
- `"paired_capped"`: the calibrated rule with each probability capped at
  `CAPPED_SCORE` (0.9) before the test: an image both models get confidently
  right is a tie, however confident each is, so a student that is as often
  right but less sure is put behind less often (the calibrated rule's false
  alarms; docs/study.md, "Capped scores").
- `"unpaired"`: the student's accuracy `s[c]` below the reference's `r[c]`
  by more than `margin + margin_standard_errors * se[c]`; all it needs is the
  reference's per-class accuracy.

The guards around either rule (patience, sticky, smoothing) need a memory
between updates: `IdentificationState`, which the callback keeps in the
`Distiller`'s variables so that a checkpoint holds it with the mask.
"""

import dataclasses
import math

import numpy as np

from tllm_tf import student_t


def _log_upper_tails(trials):
    """`log P(X >= j)` for `X ~ Binomial(trials, 1/2)`, `j = 0..trials`, exactly.

    Summed in log space from the top down: `trials` can be thousands of
    held-out images.
    """
    log_factorial = np.array([math.lgamma(k + 1.0) for k in range(trials + 1)])
    log_pmf = log_factorial[trials] - log_factorial - log_factorial[::-1] - trials * math.log(2.0)
    return np.logaddexp.accumulate(log_pmf[::-1])[::-1]


def binomial_upper_tail(successes, trials):
    """`P(X >= successes)` for `X ~ Binomial(trials, 1/2)`, exactly.

    Args:
        successes: array of non-negative integers.
        trials: array of integers `>= successes`, same shape.

    Returns:
        A float64 array of p-values (1 where `trials` is 0).
    """
    successes = np.asarray(successes, dtype=np.int64)
    trials = np.asarray(trials, dtype=np.int64)
    p_values = np.ones(successes.shape, dtype=np.float64)
    for index in np.ndindex(successes.shape):
        k, n = int(successes[index]), int(trials[index])
        if n > 0 and k > 0:
            p_values[index] = min(1.0, math.exp(_log_upper_tails(n)[k]))
    return p_values


def smallest_detectable_gap(trials, level):
    """The smallest `b - w` the one-sided exact test rejects, given `b + w`.

    What the paired rule can see: with `trials` discordant images in a class,
    the student must be behind the reference on at least this many more of
    them than it is ahead before `binomial_upper_tail(b, trials) <= level`.

    Args:
        trials: array of non-negative integers, `b + w` per class.
        level: the p-value a class must reach, in `(0, 1)` (for one class
            under Holm's correction: the significance over the classes tested).

    Returns:
        A float64 array of the same shape; NaN where even `b = trials` is not
        enough (fewer than `log2(1 / level)` discordant images).
    """
    trials = np.asarray(trials, dtype=np.int64)
    gaps = np.full(trials.shape, np.nan)
    for index in np.ndindex(trials.shape):
        n = int(trials[index])
        rejected = np.flatnonzero(_log_upper_tails(n) <= math.log(level))
        if rejected.size:
            gaps[index] = 2 * rejected[0] - n
    return gaps


def _per_test(sorted_p, significance):
    return int(np.count_nonzero(sorted_p <= significance))


def _holm(sorted_p, significance):
    # Step-down: stop at the first p-value above its threshold.
    m = sorted_p.size
    failed = np.flatnonzero(sorted_p > significance / (m - np.arange(m)))
    return int(failed[0]) if failed.size else m


def _benjamini_hochberg(sorted_p, significance):
    # Step-up: everything up to the last p-value at or below its threshold.
    m = sorted_p.size
    passing = np.flatnonzero(sorted_p <= significance * (np.arange(m) + 1) / m)
    return int(passing[-1]) + 1 if passing.size else 0


# Each correction: `(p-values sorted ascending, significance) -> how many of the
# smallest are rejected`.
_CORRECTIONS = {"holm": _holm, "benjamini_hochberg": _benjamini_hochberg, "none": _per_test}
CORRECTIONS = tuple(_CORRECTIONS)


def reject(p_values, significance, correction="holm"):
    """Which null hypotheses are rejected after a multiple-testing correction.

    Args:
        p_values: float array; NaN entries are not tested (never rejected)
            and do not count towards the number of tests.
        significance: the family-wise error rate (`"holm"`), the false
            discovery rate (`"benjamini_hochberg"`), or the per-test level
            (`"none"`), in `(0, 1)`.
        correction: one of `CORRECTIONS`. Defaults to `"holm"`.

    Returns:
        A boolean array of the same shape.

    Raises:
        ValueError: on an unknown correction.
    """
    if correction not in _CORRECTIONS:
        raise ValueError(
            f"Unknown correction: {correction!r}. Expected one of {CORRECTIONS}.")
    p_values = np.asarray(p_values, dtype=np.float64)
    rejected = np.zeros(p_values.shape, dtype=bool)
    tested = np.flatnonzero(~np.isnan(p_values))
    if tested.size == 0:
        return rejected
    order = tested[np.argsort(p_values[tested], kind="stable")]
    rejected[order[:_CORRECTIONS[correction](p_values[order], significance)]] = True
    return rejected


def paired_score_gaps(student_scores, reference_scores, labels, num_classes, cap=1.0):
    """Per class, the mean of the reference's score minus the student's, and its standard error.

    Args:
        student_scores: float array `(num_images,)`, e.g. each image's
            calibrated probability of its true class.
        reference_scores: float array `(num_images,)`, the same images in the
            same order.
        labels: int array `(num_images,)` of class ids.
        num_classes: number of classes.
        cap: each score is taken as `min(score, cap)` first (`1.0`: as
            given).

    Returns:
        A float64 array `(2, num_classes)`: the mean differences, then their
        standard errors (the sample standard deviation over `sqrt(n)`); NaN
        for a class with fewer than two images.
    """
    differences = (np.minimum(np.asarray(reference_scores, np.float64), cap)
                   - np.minimum(np.asarray(student_scores, np.float64), cap))
    labels = np.asarray(labels, dtype=np.int64)
    gaps = np.full((2, num_classes), np.nan)
    for c in range(num_classes):
        class_differences = differences[labels == c]
        if class_differences.size >= 2:
            gaps[0, c] = class_differences.mean()
            gaps[1, c] = class_differences.std(ddof=1) / np.sqrt(class_differences.size)
    return gaps


def discordant_counts(student_correct, reference_correct, labels, num_classes):
    """Per class, `(b, w)`: images only the reference gets right, and the reverse.

    Args:
        student_correct: boolean array `(num_images,)`.
        reference_correct: boolean array `(num_images,)`, the same images in
            the same order.
        labels: int array `(num_images,)` of class ids.
        num_classes: number of classes.

    Returns:
        Two int64 arrays of shape `(num_classes,)`.
    """
    student_correct = np.asarray(student_correct, dtype=bool)
    reference_correct = np.asarray(reference_correct, dtype=bool)
    labels = np.asarray(labels, dtype=np.int64)
    behind = np.bincount(labels[reference_correct & ~student_correct], minlength=num_classes)
    ahead = np.bincount(labels[student_correct & ~reference_correct], minlength=num_classes)
    return behind[:num_classes], ahead[:num_classes]


@dataclasses.dataclass(frozen=True)
class RuleOptions:
    """The options of the identification rule and its guards.

    Attributes:
        rule: one of `RULES`.
        significance: level of the paired tests, in `(0, 1)`.
        correction: multiple-testing correction of the paired tests.
        margin: how far a class must fall behind (accuracy for the paired
            and unpaired rules, mean probability for the calibrated one).
        margin_standard_errors: extra margin in standard errors (unpaired).
        smoothing: weight of the past in a moving average of the compared
            quantities over updates, in `[0, 1)`.
        patience: consecutive updates a class must be behind to be masked.
        sticky: whether a masked class stays masked.
        min_samples: fewest held-out images a class needs to be judged.

    Every field is given: the defaults users get live in one place,
    `UndistillableClassCallback`'s signature (which `RunConfig` mirrors).

    Raises:
        ValueError: on an unknown rule or correction, or a value out of the
            range given above (`significance` in `(0, 1)`, `margin` and
            `margin_standard_errors` `>= 0`, `smoothing` in `[0, 1)`,
            `patience` and `min_samples` `>= 1`).
    """

    rule: str
    significance: float
    correction: str
    margin: float
    margin_standard_errors: float
    smoothing: float
    patience: int
    sticky: bool
    min_samples: int

    def __post_init__(self):
        checks = (
            (self.rule in RULES, f"Expected rule in {RULES}. Received: rule={self.rule!r}"),
            (self.correction in CORRECTIONS,
             f"Expected correction in {CORRECTIONS}. Received: correction={self.correction!r}"),
            (0.0 < self.significance < 1.0,
             f"Expected 0 < significance < 1. Received: significance={self.significance}"),
            (self.margin >= 0, f"Expected margin >= 0. Received: margin={self.margin}"),
            (self.margin_standard_errors >= 0,
             "Expected margin_standard_errors >= 0. Received: "
             f"margin_standard_errors={self.margin_standard_errors}"),
            (0.0 <= self.smoothing < 1.0,
             f"Expected 0 <= smoothing < 1. Received: smoothing={self.smoothing}"),
            (self.patience >= 1, f"Expected patience >= 1. Received: patience={self.patience}"),
            (self.min_samples >= 1,
             f"Expected min_samples >= 1. Received: min_samples={self.min_samples}"),
        )
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


@dataclasses.dataclass(frozen=True)
class IdentificationState:
    """What the rule keeps between updates, one entry per class.

    Attributes:
        streak: consecutive updates each class has been behind.
        smoothed: the moving averages of the two compared quantities
            (unpaired: student and reference accuracy; paired: the
            discordant counts `b` and `w`; paired_calibrated: the mean
            score gap and its standard error), shape `(2, num_classes)`;
            NaN before the first update.
        masked: the classes masked after the last update.
    """

    streak: np.ndarray
    smoothed: np.ndarray
    masked: np.ndarray

    @classmethod
    def initial(cls, num_classes):
        """The state before any update: no streaks, no averages, nothing masked.

        Args:
            num_classes: number of classes.

        Returns:
            An `IdentificationState` with zero streaks, NaN averages and no
            class masked.
        """
        return cls(streak=np.zeros(num_classes, np.int64),
                   smoothed=np.full((2, num_classes), np.nan),
                   masked=np.zeros(num_classes, bool))

    def to_array(self):
        """The state as one float32 array `(4, num_classes)` (a model variable)."""
        return np.concatenate([
            self.streak[np.newaxis].astype(np.float32),
            self.smoothed.astype(np.float32),
            self.masked[np.newaxis].astype(np.float32),
        ])

    @classmethod
    def from_array(cls, values):
        """The state stored by `to_array` (streaks rounded, `masked` where > 0.5).

        Args:
            values: array-like `(4, num_classes)`, e.g. the `Distiller`'s
                `identification_state` variable.

        Returns:
            An `IdentificationState`.
        """
        values = np.asarray(values, dtype=np.float64)
        return cls(streak=np.rint(values[0]).astype(np.int64),
                   smoothed=values[1:3].copy(),
                   masked=values[3] > 0.5)


@dataclasses.dataclass(frozen=True)
class Evidence:
    """What one update measured on the held-out split.

    Attributes:
        num_samples: held-out images per class.
        student_accuracy: the student's per-class accuracy (NaN: no images).
        reference_accuracy: the reference's, on the same split.
        behind_counts: paired rule only: `b`, images only the reference
            gets right; `None` for the unpaired rule.
        ahead_counts: paired rule only: `w`, images only the student gets
            right.
        score_gaps: calibrated rule only: `paired_score_gaps` of the two
            models' calibrated scores.
    """

    num_samples: np.ndarray
    student_accuracy: np.ndarray
    reference_accuracy: np.ndarray
    behind_counts: np.ndarray = None
    ahead_counts: np.ndarray = None
    score_gaps: np.ndarray = None


def _smooth(previous, current, smoothing):
    if smoothing == 0.0:
        return current
    blended = smoothing * previous + (1.0 - smoothing) * current
    # No previous value (first update, or a class with no images): start afresh.
    return np.where(np.isnan(previous), current, blended)


def _paired_behind(evidence, smoothed, options):
    behind_counts = np.rint(smoothed[0])
    ahead_counts = np.rint(smoothed[1])
    trials = behind_counts + ahead_counts
    p_values = binomial_upper_tail(behind_counts.astype(np.int64), trials.astype(np.int64))
    judged = evidence.num_samples >= options.min_samples
    p_values = np.where(judged, p_values, np.nan)
    behind = reject(p_values, options.significance, options.correction)
    if options.margin > 0:
        with np.errstate(invalid="ignore", divide="ignore"):
            gap = (behind_counts - ahead_counts) / np.maximum(evidence.num_samples, 1)
        behind &= gap > options.margin
    return behind, p_values


def _calibrated_behind(evidence, smoothed, options):
    mean_gap, standard_error = smoothed
    num_samples = np.asarray(evidence.num_samples, dtype=np.int64)
    p_values = np.full(mean_gap.shape, np.nan)
    for c in np.flatnonzero((num_samples >= max(options.min_samples, 2))
                            & ~np.isnan(mean_gap) & ~np.isnan(standard_error)):
        if standard_error[c] > 0:
            p_values[c] = student_t.upper_p_value(mean_gap[c] / standard_error[c],
                                                  num_samples[c] - 1)
        else:  # Every image's gap alike: no evidence of a harm unless all are behind.
            p_values[c] = 0.0 if mean_gap[c] > 0 else 1.0
    behind = reject(p_values, options.significance, options.correction)
    if options.margin > 0:
        behind &= mean_gap > options.margin
    return behind, p_values


def _unpaired_behind(evidence, smoothed, options):
    student, reference = smoothed
    num_samples = np.asarray(evidence.num_samples, dtype=np.float64)
    threshold = reference - options.margin
    if options.margin_standard_errors > 0:
        # Pooled accuracy with a pseudo-count each way, so a perfect class
        # still has a non-zero standard error.
        pooled = (num_samples * (student + reference) / 2 + 1) / (num_samples + 2)
        standard_error = np.sqrt(2 * pooled * (1 - pooled) / np.maximum(num_samples, 1))
        threshold = threshold - options.margin_standard_errors * standard_error
    with np.errstate(invalid="ignore"):
        behind = student < threshold
    judged = (num_samples >= options.min_samples) & ~np.isnan(reference)
    return behind & judged, None


def _paired_counts(evidence):
    if evidence.behind_counts is None:
        raise ValueError(
            "The paired rule needs the reference's per-image results on the "
            "held-out split; only per-class accuracies were given. Pass the "
            "reference model or its predictions file, or use rule='unpaired'.")
    return np.stack([evidence.behind_counts, evidence.ahead_counts]).astype(np.float64)


def _score_gaps(evidence):
    if evidence.score_gaps is None:
        raise ValueError(
            "The calibrated rules need each held-out image's calibrated score from "
            "the student and the reference; none were given. Pass the reference model, or "
            "a reference whose predictions file holds scores (written by this version's "
            "reference stage or PredictionRecorder), or use rule='paired'.")
    return np.asarray(evidence.score_gaps, dtype=np.float64)


def _accuracies(evidence):
    return np.stack([evidence.student_accuracy, evidence.reference_accuracy])


@dataclasses.dataclass(frozen=True)
class _Rule:
    """An identification rule.

    Attributes:
        compared: `evidence -> (2, num_classes) array`, the quantities
            compared (smoothed over updates with `smoothing`, and kept between
            updates in `IdentificationState.smoothed`, which a checkpoint holds).
        behind: `(evidence, smoothed, options) -> (behind, p_values)`, which
            classes they put behind, with the test's p-values (or `None`).
        per_image: whether it compares the two models image by image, so that
            it needs the reference's per-image results on the held-out split,
            not only its per-class accuracies.
        scores: whether those results must hold each image's calibrated
            score, not only whether it was classified right.
        score_cap: the scores are capped at this before they are compared.
    """

    compared: object
    behind: object
    per_image: bool
    scores: bool = False
    score_cap: float = 1.0


# Chosen on stored KD and label-only students of Fashion-MNIST (seeds 10-19): capped at
# 0.9 the test found 54% of KD's per-class harms with 3.8% false alarms; uncapped 65% and
# 5.2%; at 0.8, 43% and 3.8% (docs/study.md, "Capped scores").
CAPPED_SCORE = 0.9

_RULES = {
    "paired": _Rule(_paired_counts, _paired_behind, per_image=True),
    "paired_calibrated": _Rule(_score_gaps, _calibrated_behind, per_image=True, scores=True),
    "paired_capped": _Rule(_score_gaps, _calibrated_behind, per_image=True, scores=True,
                           score_cap=CAPPED_SCORE),
    "unpaired": _Rule(_accuracies, _unpaired_behind, per_image=False),
}
RULES = tuple(_RULES)


def reads_per_image_results(rule):
    """Whether `rule` (one of `RULES`) needs the reference's per-image results.

    A rule that does not reads the reference's per-class accuracies only, even
    where per-image results were given.
    """
    return _RULES[rule].per_image


def reads_scores(rule):
    """Whether `rule` (one of `RULES`) needs each held-out image's calibrated score."""
    return _RULES[rule].scores


def score_cap(rule):
    """What `rule` (one of `RULES` that reads scores) caps each score at before comparing."""
    return _RULES[rule].score_cap


def update(state, evidence, options):
    """One identification update: the new state and the classes to mask.

    Args:
        state: the `IdentificationState` after the previous update.
        evidence: the `Evidence` of this update; the paired rule needs its
            discordant counts.
        options: the `RuleOptions`.

    Returns:
        `(new_state, masked, p_values)`: `masked` a boolean array of the
        classes to stop distilling; `p_values` the paired tests' per-class
        p-values before correction, NaN for a class with fewer than
        `min_samples` images (`None` for the unpaired rule).

    Raises:
        ValueError: if the paired rule is given no discordant counts, or the
            calibrated rule no score gaps.
    """
    rule = _RULES[options.rule]
    smoothed = _smooth(state.smoothed, rule.compared(evidence), options.smoothing)
    behind, p_values = rule.behind(evidence, smoothed, options)
    streak = np.where(behind, state.streak + 1, 0)
    masked = streak >= options.patience
    if options.sticky:
        masked |= state.masked
    new_state = IdentificationState(streak=streak, smoothed=smoothed, masked=masked)
    return new_state, masked, p_values
