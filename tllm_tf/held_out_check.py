"""A trained student judged against another model on the held-out split: is it behind at a level?

`keep_baseline_if_behind(student, baseline, held_out_ds, num_classes)` gives
the student the baseline's weights when it is. The student stage of the
tools asks this twice once a student has trained:
- the refit's safeguard (`--refit_fallback`, on by default): the tllm_refit
  student against the tllm student. On the classes KD hurts the refit gains
  about twice what the tllm student gains, but on a very small student it can
  hand a confused class's images to a neighbour (docs/study.md: the `lenet_2`
  student's Coat, 0% in two seeds of thirty);
- the reference's fallback (`--reference_fallback`, on by default): every
  distilled student against the label-only reference. Where distillation hurts
  every class a little, the per-class rule sees none of the harms (a few
  points of one class's held-out images are noise), while the whole split
  sees their sum.

Both models are judged on the held-out split (training images, never the
test split), image by image: `behind` counts the images the baseline
classifies correctly and the candidate does not, `ahead` the reverse. The
candidate is behind when a one-sided exact binomial test of `behind` among the
`behind + ahead` discordant images (McNemar's test, as the identification rule
uses per class) rejects "the candidate is no worse" at `significance`; it then
takes the baseline's weights. What "behind" means depends on the level: at
0.05 it is behind beyond noise; at the reference's fallback's 0.2 up to one
student in five that is no worse than the baseline is still replaced. So the
verdicts name the p-value and the level rather than "beyond noise".
"""

import dataclasses

import numpy as np

from tllm_tf import identification
from tllm_tf import metrics as metrics_lib
from tllm_tf import model_checks


@dataclasses.dataclass(frozen=True)
class HeldOutCheck:
    """The held-out comparison of a candidate with a baseline.

    Attributes:
        candidate: the candidate's name in the JSON and the log ("refit", "student").
        baseline: the baseline's name ("tllm", "reference").
        candidate_accuracy: the candidate's held-out accuracy.
        baseline_accuracy: the baseline's held-out accuracy.
        behind: images the baseline gets right and the candidate wrong.
        ahead: images the candidate gets right and the baseline wrong.
        p_value: one-sided exact p-value of "the candidate is no worse".
        significance: the level the p-value is judged at.
    """

    candidate: str
    baseline: str
    candidate_accuracy: float
    baseline_accuracy: float
    behind: int
    ahead: int
    p_value: float
    significance: float

    @property
    def candidate_behind(self):
        """Whether `p_value < significance` (the candidate then takes the baseline's weights)."""
        return self.p_value < self.significance

    @property
    def kept(self):
        """The name of the model whose weights the stage keeps."""
        return self.baseline if self.candidate_behind else self.candidate

    def to_json(self):
        """The JSON record: `<candidate>_accuracy`, `<baseline>_accuracy`, the counts, `kept`."""
        return {f"{self.candidate}_accuracy": self.candidate_accuracy,
                f"{self.baseline}_accuracy": self.baseline_accuracy,
                "behind": self.behind, "ahead": self.ahead, "p_value": self.p_value,
                "significance": self.significance, "kept": self.kept}

    def verdict(self):
        """The test's outcome in words, e.g. `"not behind it (p = 0.41 >= 0.2)"`.

        `reporting` words a check's JSON the same way (it cannot import this
        module, which loads TensorFlow).
        """
        if self.candidate_behind:
            return f"behind it (p = {self.p_value:.3g} < {self.significance:g})"
        return f"not behind it (p = {self.p_value:.3g} >= {self.significance:g})"

    def line(self):
        """The stage's log line: both held-out accuracies, the discordant images, the verdict."""
        outcome = (f"the {self.candidate} takes the {self.baseline}'s weights"
                   if self.candidate_behind else f"the {self.candidate} is kept")
        return (f"held-out accuracy {self.candidate_accuracy:.2%} against the {self.baseline}'s "
                f"{self.baseline_accuracy:.2%} ({_images(self.behind)} only the {self.baseline} "
                f"gets right, {self.ahead} only the {self.candidate}), {self.verdict()}: "
                f"{outcome}")


def _images(count):
    return f"{count} image" if count == 1 else f"{count} images"


def compare(candidate_correct, baseline_correct, significance, names=("candidate", "baseline")):
    """Judges a candidate against a baseline on the same images.

    Args:
        candidate_correct: bool array `(num_images,)`, the candidate's correct images.
        baseline_correct: bool array of the same images, the baseline's.
        significance: the test's level, in (0, 1).
        names: `(candidate, baseline)`, the names the result carries.

    Returns:
        A `HeldOutCheck`.
    """
    _check_significance(significance)
    candidate_correct = np.asarray(candidate_correct, bool)
    baseline_correct = np.asarray(baseline_correct, bool)
    if candidate_correct.shape != baseline_correct.shape:
        raise ValueError(
            "The two models must be judged on the same held-out images. Received: "
            f"{candidate_correct.shape[0]} and {baseline_correct.shape[0]} images")
    behind = int(np.sum(baseline_correct & ~candidate_correct))
    ahead = int(np.sum(candidate_correct & ~baseline_correct))
    p_value = identification.binomial_upper_tail(np.array([behind]), np.array([behind + ahead]))
    return HeldOutCheck(
        candidate=names[0], baseline=names[1],
        candidate_accuracy=float(candidate_correct.mean()) if candidate_correct.size else 0.0,
        baseline_accuracy=float(baseline_correct.mean()) if baseline_correct.size else 0.0,
        behind=behind, ahead=ahead, p_value=float(p_value[0]), significance=float(significance))


def _check_significance(significance):
    if not 0.0 < significance < 1.0:  # Also false for NaN.
        raise ValueError(
            f"Expected 0 < significance < 1. Received: significance={significance}")


def check(candidate, baseline, held_out, num_classes, significance,
          names=("candidate", "baseline")):
    """Compares two models on the held-out batches (`compare` on their correct images).

    Args:
        candidate: the trained student judged.
        baseline: the model it must not be behind.
        held_out: evaluation batches of the held-out split (unshuffled).
        num_classes: the data set's classes.
        significance: the test's level.
        names: `(candidate, baseline)`, as in `compare`.

    Returns:
        A `HeldOutCheck`.

    Raises:
        ValueError: on a held-out label outside `[0, num_classes)` (it would
            count as an image neither model gets right), or batches that come
            in another order for the second model.
    """
    candidate_correct, labels = metrics_lib.PerImageCorrectness(
        candidate, num_classes, labels_name="Held-out labels")(held_out)
    baseline_correct, baseline_labels = metrics_lib.PerImageCorrectness(
        baseline, num_classes, labels_name="Held-out labels")(held_out)
    if not np.array_equal(labels, baseline_labels):  # A shuffled split would pair wrong images.
        raise ValueError("The held-out batches came in another order for the second model; "
                         "pass a held-out data set that is not shuffled.")
    return compare(candidate_correct, baseline_correct, significance, names)


def keep_baseline_if_behind(candidate, baseline, held_out, num_classes, significance=0.05,
                            names=("student", "reference"), before_replacing=None):
    """Gives `candidate` the baseline's weights if it is behind them on the held-out split.

    With the label-only reference as the baseline this is the tools' default
    fallback: a distilled student that is behind labels alone at the level
    becomes the label-only student.

    Args:
        candidate: the trained student; its weights are replaced when it is behind.
        baseline: a model of the same architecture (the label-only reference).
        held_out: the held-out split of the training data, in unshuffled batches.
        num_classes: the data set's classes.
        significance: the test's level. Defaults to 0.05.
        names: `(candidate, baseline)`, the names the result carries.
            Defaults to `("student", "reference")`.
        before_replacing: a callable given `candidate` once it is found
            behind, just before it takes the baseline's weights (it still holds
            its own), e.g. to save it; not called when the candidate is kept.
            Defaults to `None`.

    Returns:
        The `HeldOutCheck`; its `kept` names the model whose weights the
        candidate has now.

    Raises:
        ValueError: before anything is judged or changed, if `significance`
            is not in (0, 1), a model does not output `num_classes` logits,
            the baseline's weights do not fit the candidate (another
            architecture), or the held-out split is empty or not batched; and
            before any weight changes, on a held-out label outside
            `[0, num_classes)`.
    """
    _check_significance(significance)
    model_checks.check_num_classes(
        num_classes, {names[0]: candidate, names[1]: baseline},
        "Pass the number of classes both models output (the data set's).")
    _check_same_architecture(candidate, baseline, names)
    held_out = metrics_lib.as_dataset(held_out)
    model_checks.check_held_out_data(
        held_out, candidate, consequence=f"the {names[0]} cannot be judged against the {names[1]}")
    result = check(candidate, baseline, held_out, num_classes, significance, names)
    if result.candidate_behind:
        if before_replacing is not None:
            before_replacing(candidate)
        candidate.set_weights(baseline.get_weights())
    return result


def _check_same_architecture(candidate, baseline, names):
    """Refuses a baseline whose weights do not fit the candidate, naming the first that differs."""
    weights, baseline_weights = candidate.weights, baseline.weights
    for index, (weight, other) in enumerate(zip(weights, baseline_weights)):
        if tuple(weight.shape) != tuple(other.shape):
            difference = (f"weight {index} of the {names[0]} ({weight.path!r}) has shape "
                          f"{tuple(weight.shape)} and the {names[1]}'s ({other.path!r}) "
                          f"{tuple(other.shape)}")
            break
    else:
        if len(weights) == len(baseline_weights):
            return
        difference = (f"the {names[0]} has {len(weights)} weights and the {names[1]} "
                      f"{len(baseline_weights)}")
    raise ValueError(
        f"The {names[1]}'s weights do not fit the {names[0]}: {difference}. The fallback "
        f"gives the {names[0]} the {names[1]}'s weights, so both must be the same "
        f"architecture (the label-only reference is the student trained on labels alone).")
