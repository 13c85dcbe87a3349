"""The accuracy study's statistics: paired differences over seeds, masks, flips.

Pure NumPy (no TensorFlow), so reading a study's results is instant. Every
comparison is paired by seed: two arms of one seed share the data split, the
initialisation, the batches and the teacher, so their difference cancels
most of the seed-to-seed variation.
"""

import math

import numpy as np

from tllm_tf import identification
from tllm_tf import student_t

# Two-sided 95% quantiles of Student's t for 1..30 degrees of freedom.
_T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
          2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
          2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


_Z_975 = 1.959963984540054


def t_quantile_975(degrees_of_freedom):
    """The 97.5% quantile of Student's t.

    From the table up to 30 degrees of freedom; beyond, the Cornish-Fisher
    expansion in `1 / degrees_of_freedom` (Abramowitz and Stegun 26.7.5),
    within 1e-4 of the exact value there (1.96 would make a 40-seed interval
    3% too narrow).
    """
    if degrees_of_freedom < 1:
        return math.nan
    if degrees_of_freedom <= len(_T_975):
        return _T_975[degrees_of_freedom - 1]
    z, nu = _Z_975, float(degrees_of_freedom)
    terms = ((z ** 3 + z) / 4,
             (5 * z ** 5 + 16 * z ** 3 + 3 * z) / 96,
             (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / 384,
             (79 * z ** 9 + 776 * z ** 7 + 1482 * z ** 5 - 1920 * z ** 3 - 945 * z) / 92160)
    return z + sum(term / nu ** (power + 1) for power, term in enumerate(terms))


def paired_difference(a, b):
    """Summary of `a - b` over paired seeds.

    Args:
        a: array `(seeds,)` or `(seeds, k)`.
        b: the same shape.

    Returns:
        A dict of arrays (or floats): `mean`, `std` (sample), `ci_low`,
        `ci_high` (95%, Student's t), `better` and `worse` (seeds where
        `a > b` and `a < b`), `seeds`.
    """
    if np.shape(a) != np.shape(b):
        raise ValueError(f"Expected paired values of one shape. Received shapes "
                         f"{np.shape(a)} and {np.shape(b)}.")
    difference = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    seeds = difference.shape[0]
    mean = difference.mean(axis=0)
    # One seed has no spread to speak of: NaN, not 0 (which would read as "no variation").
    std = difference.std(axis=0, ddof=1) if seeds > 1 else np.full_like(mean, np.nan)
    return _summary(mean, std, seeds, (difference > 0).sum(axis=0),
                    (difference < 0).sum(axis=0))


# Accuracies are counts over at most millions of images, so differences that agree seed by
# seed agree to ~1e-16 after float rounding (k/n - j/m differs by an ulp between seeds); any
# real spread is above 1e-7.
_NO_SPREAD = 1e-9


def has_no_spread(std):
    """Where a `paired_difference`'s sample std is zero but for float rounding (bool array)."""
    return np.asarray(std, np.float64) <= _NO_SPREAD


def _summary(mean, std, seeds, better, worse):
    """A `paired_difference` summary, its 95% CI (Student's t) from `mean`, `std` and `seeds`."""
    half_width = t_quantile_975(seeds - 1) * std / math.sqrt(seeds) if seeds > 1 else np.nan
    return {"mean": mean, "std": std, "ci_low": mean - half_width, "ci_high": mean + half_width,
            "better": better, "worse": worse, "seeds": seeds}


def mask_matrix(class_masks):
    """The masked classes of one TLLM run's updates, a bool array `(updates, num_classes)`.

    Args:
        class_masks: the `class_mask` of each update (1 = distil), in epoch
            order.
    """
    if not class_masks:
        return np.zeros((0, 0), bool)
    return np.array(class_masks, dtype=np.float64) <= 0


def flips_per_100_updates(masks, masked_from_start=()):
    """Per class, how often its mask changed, per 100 updates.

    Args:
        masks: bool array `(updates, num_classes)`.
        masked_from_start: the classes masked before the first update (a
            fixed mask); the others start distilled. Defaults to none.
    """
    if masks.shape[0] == 0:
        return np.zeros(masks.shape[1:])
    start = np.zeros((1, masks.shape[1]), bool)
    start[0, list(masked_from_start)] = True
    padded = np.concatenate([start, masks])
    changes = (padded[1:] != padded[:-1]).sum(axis=0)
    return 100.0 * changes / masks.shape[0]


def paired_p_values(difference):
    """The paired t-test's two-sided p-values of a `paired_difference` summary.

    Needs only the summary (mean, sample std, seeds), so a stored study's
    JSON can be tested again without its per-seed values.

    Args:
        difference: a dict with `mean`, `std` (floats or arrays) and `seeds`.

    Returns:
        A float array of `mean`'s shape: NaN with fewer than two seeds or
        where the summary is NaN (a NaN among the values); 1 where every
        seed's difference is 0. Where every seed's is one number other than
        0 (`has_no_spread`: equal but for float rounding), Student's t is
        undefined (no spread: per-class accuracies move in whole images, so
        a few seeds often agree exactly), and the p-value is the exact sign
        test's, `sign_test_p_value(seeds)`: two seeds alike give 0.5, not 0.
    """
    mean = np.asarray(difference["mean"], np.float64)
    std = np.asarray(difference["std"], np.float64)
    seeds = int(difference["seeds"])
    if seeds < 2:
        return np.full(mean.shape, np.nan)
    no_spread = has_no_spread(std)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(no_spread, 0.0, mean * math.sqrt(seeds) / std)
    # A NaN in the values is no evidence either way: not tested.
    t = np.where(np.isnan(mean) | np.isnan(std), np.nan, t)
    p_values = student_t.two_sided_p_value(t, seeds - 1)
    return np.where(no_spread & (np.abs(mean) > _NO_SPREAD), sign_test_p_value(seeds), p_values)


def sign_test_p_value(seeds):
    """The exact two-sided sign test's p-value when all `seeds` differences have one sign."""
    return min(1.0, 2.0 * 0.5 ** seeds)


def pooled_difference(parts):
    """One `paired_difference` summary of disjoint groups of seeds, from theirs.

    Exact: the pooled mean and sample variance follow from each group's mean,
    sample std and size. The CI is recomputed for the pooled seeds; `better`
    and `worse` are summed.

    Args:
        parts: `paired_difference` summaries (dicts of floats or lists).

    Returns:
        A summary of the same form, arrays where the parts hold lists.
    """
    seeds = np.array([part["seeds"] for part in parts], np.float64)
    means = np.array([part["mean"] for part in parts], np.float64)
    stds = np.nan_to_num(np.array([part["std"] for part in parts], np.float64))
    total = seeds.sum()
    shape = (-1,) + (1,) * (means.ndim - 1)
    mean = (seeds.reshape(shape) * means).sum(axis=0) / total
    squares = ((seeds.reshape(shape) - 1) * stds ** 2
               + seeds.reshape(shape) * (means - mean) ** 2).sum(axis=0)
    std = np.sqrt(squares / (total - 1)) if total > 1 else np.full_like(mean, np.nan)
    return _summary(mean, std, int(total), np.sum([part["better"] for part in parts], axis=0),
                    np.sum([part["worse"] for part in parts], axis=0))


# The corrections `significantly_hurt` takes: none, or one across the classes of a setting.
HURT_CORRECTIONS = ("none", "holm")


def hurt_from_difference(difference, correction="none"):
    """Classes where a `paired_difference` (arm minus labels) is below 0 beyond noise.

    A class whose difference is one number in every seed has a CI of no
    width, which says nothing of the noise: it counts as hurt only if the
    sign test rejects (`paired_p_values`; six seeds or more, all below 0).

    Args:
        difference: a `paired_difference` summary over classes.
        correction: `"none"` (the 95% CI below 0, each class on its own) or
            `"holm"` (also rejected by the paired t-test after Holm's
            correction across the classes, at a family-wise 5%: a subset of
            the first). Defaults to `"none"`.

    Returns:
        A bool array `(num_classes,)`.

    Raises:
        ValueError: on a correction not in `HURT_CORRECTIONS`.
    """
    if correction not in HURT_CORRECTIONS:
        raise ValueError(f"Unknown correction: {correction!r}. Expected one of "
                         f"{HURT_CORRECTIONS}.")
    p_values = paired_p_values(difference)
    hurt = np.asarray(difference["ci_high"], np.float64) < 0
    hurt &= ~has_no_spread(difference["std"]) | (p_values < 0.05)
    if correction == "holm":
        hurt &= identification.reject(p_values, 0.05, "holm")
    return hurt


def significantly_hurt(kd_per_class, labels_per_class, correction="none"):
    """Classes where KD is below labels beyond noise: the paired 95% CI is below 0.

    Args:
        kd_per_class: array `(seeds, num_classes)` of test accuracy.
        labels_per_class: the label-only student's, same seeds.
        correction: `"none"` (each class on its own: with ten classes and no
            harm anywhere, about one table in five names one) or `"holm"`
            (`hurt_from_difference`). Defaults to `"none"`.

    Returns:
        `(hurt, not_hurt)`: two bool arrays `(num_classes,)`; `not_hurt` is
        the classes whose CI lies at or above 0 or contains it.

    Raises:
        ValueError: on a correction not in `HURT_CORRECTIONS`.
    """
    hurt = hurt_from_difference(paired_difference(kd_per_class, labels_per_class), correction)
    return hurt, ~hurt
