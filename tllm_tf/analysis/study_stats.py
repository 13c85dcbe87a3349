"""The accuracy study's statistics: paired differences over seeds, masks, flips.

Pure NumPy (no TensorFlow), so reading a study's results is instant. Every
comparison is paired by seed: two arms of one seed share the data split, the
initialisation, the batches and the teacher, so their difference cancels
most of the seed-to-seed variation.
"""

import math

import numpy as np

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
    half_width = t_quantile_975(seeds - 1) * std / math.sqrt(seeds) if seeds > 1 else np.nan
    return {
        "mean": mean,
        "std": std,
        "ci_low": mean - half_width,
        "ci_high": mean + half_width,
        "better": (difference > 0).sum(axis=0),
        "worse": (difference < 0).sum(axis=0),
        "seeds": seeds,
    }


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


def significantly_hurt(kd_per_class, labels_per_class):
    """Classes where KD is below labels beyond noise: the paired 95% CI is below 0.

    Args:
        kd_per_class: array `(seeds, num_classes)` of test accuracy.
        labels_per_class: the label-only student's, same seeds.

    Returns:
        `(hurt, not_hurt)`: two bool arrays `(num_classes,)`; `not_hurt` is
        the classes whose CI lies at or above 0 or contains it.
    """
    difference = paired_difference(kd_per_class, labels_per_class)
    hurt = difference["ci_high"] < 0
    return hurt, ~hurt
