"""The refit's safeguard: keep the tllm student when the refit is behind it on held-out images.

The tllm_refit student masks the classes the tllm student ended with from its
first step, under `--refit_policy`. On the classes KD hurts it gains about
twice what the tllm student gains, but on a very small student it can hand a
confused class's images to a neighbour (docs/study.md: the `lenet_2` student's
Coat, 0% in two seeds of thirty). So, once it has trained, both students are
judged on the held-out split (training images, never the test split), image
by image: `behind` counts the images the tllm student classifies correctly
and the refit does not, `ahead` the reverse. The refit is behind when a
one-sided exact binomial test of `behind` among the `behind + ahead`
discordant images (McNemar's test, as the identification rule uses per class)
rejects "the refit is no worse" at `--significance`; the refit stage then
keeps the tllm student's weights, so it is never behind the tllm student
beyond noise.
"""

import dataclasses

import numpy as np

from tllm_tf import identification
from tllm_tf import metrics as metrics_lib


@dataclasses.dataclass(frozen=True)
class RefitCheck:
    """The held-out comparison of the refit with the tllm student.

    Attributes:
        refit_accuracy: the refit's held-out accuracy.
        tllm_accuracy: the tllm student's held-out accuracy.
        behind: images the tllm student gets right and the refit wrong.
        ahead: images the refit gets right and the tllm student wrong.
        p_value: one-sided exact p-value of "the refit is no worse".
        significance: the level the p-value is judged at.
    """

    refit_accuracy: float
    tllm_accuracy: float
    behind: int
    ahead: int
    p_value: float
    significance: float

    @property
    def refit_behind(self):
        """Whether the refit is behind the tllm student beyond noise (it is then not kept)."""
        return self.p_value < self.significance

    def to_json(self):
        return dict(dataclasses.asdict(self), kept="tllm" if self.refit_behind else "refit")

    def line(self):
        verdict = ("behind it beyond noise: the refit keeps the tllm student's weights"
                   if self.refit_behind else "not behind it: the refit is kept")
        return (f"held-out accuracy {self.refit_accuracy:.2%} against the tllm student's "
                f"{self.tllm_accuracy:.2%} ({self.behind} images only the tllm student gets "
                f"right, {self.ahead} only the refit; p = {self.p_value:.3g} at "
                f"{self.significance:g}): {verdict}")


def compare(refit_correct, tllm_correct, significance):
    """Judges the refit against the tllm student on the same images.

    Args:
        refit_correct: bool array `(num_images,)`, the refit's correct images.
        tllm_correct: bool array of the same images, the tllm student's.
        significance: the test's level, in (0, 1).

    Returns:
        A `RefitCheck`.
    """
    refit_correct = np.asarray(refit_correct, bool)
    tllm_correct = np.asarray(tllm_correct, bool)
    if refit_correct.shape != tllm_correct.shape:
        raise ValueError(
            "The two students must be judged on the same held-out images. Received: "
            f"{refit_correct.shape[0]} and {tllm_correct.shape[0]} images")
    behind = int(np.sum(tllm_correct & ~refit_correct))
    ahead = int(np.sum(refit_correct & ~tllm_correct))
    p_value = identification.binomial_upper_tail(np.array([behind]), np.array([behind + ahead]))
    return RefitCheck(
        refit_accuracy=float(refit_correct.mean()) if refit_correct.size else 0.0,
        tllm_accuracy=float(tllm_correct.mean()) if tllm_correct.size else 0.0,
        behind=behind, ahead=ahead, p_value=float(p_value[0]), significance=float(significance))


def check(refit, tllm, held_out, num_classes, significance):
    """Compares two models on the held-out batches (`compare` on their correct images).

    Args:
        refit: the trained refit student.
        tllm: the finished tllm student.
        held_out: evaluation batches of the held-out split.
        num_classes: the data set's classes.
        significance: the test's level.

    Returns:
        A `RefitCheck`.
    """
    refit_correct, labels = metrics_lib.PerImageCorrectness(refit, num_classes)(held_out)
    tllm_correct, tllm_labels = metrics_lib.PerImageCorrectness(tllm, num_classes)(held_out)
    if not np.array_equal(labels, tllm_labels):  # A shuffled split would pair the wrong images.
        raise ValueError("The held-out batches came in another order for the second model; "
                         "evaluate on unshuffled batches (build.eval_batches).")
    return compare(refit_correct, tllm_correct, significance)
