"""Tail probabilities of Student's t distribution, without SciPy.

Two tests read them: the study's paired comparison of two arms over seeds
(`tllm_tf.analysis.study_stats`, on the report side, which loads neither SciPy
nor TensorFlow), and the calibrated identification rule's per-class test over
held-out images (`tllm_tf.identification`).
"""

import math

import numpy as np


def two_sided_p_value(t, degrees_of_freedom):
    """The two-sided p-value of Student's t: `P(|T| >= |t|)`.

    For whole degrees of freedom, by the finite series of Abramowitz and
    Stegun 26.7.3 and 26.7.4, as one minus
    `P(|T| < t)`: within about 1e-11 of the exact value, so p-values below
    about 1e-15 come out as 0.

    Args:
        t: a float or an array of them; NaN gives NaN, +-inf gives 0.
        degrees_of_freedom: a whole number, at least 1.

    Returns:
        A float array of `t`'s shape, in `[0, 1]`.

    Raises:
        ValueError: when `degrees_of_freedom` is not a whole number >= 1.
    """
    if (not math.isfinite(degrees_of_freedom) or degrees_of_freedom != int(degrees_of_freedom)
            or degrees_of_freedom < 1):
        raise ValueError(f"Expected whole degrees of freedom >= 1. Received "
                         f"{degrees_of_freedom!r}.")
    nu = int(degrees_of_freedom)
    theta = np.arctan(np.abs(np.asarray(t, np.float64)) / math.sqrt(nu))
    sin, cos = np.sin(theta), np.cos(theta)
    # P(|T| < t): with an odd nu, (2/pi)(theta + sin * sum of a_k cos^(2k+1)), a_k = a_(k-1)
    # 2k/(2k+1); with an even nu, sin * sum of b_k cos^(2k), b_k = b_(k-1) (2k-1)/(2k).
    odd = nu % 2
    coefficient, power = 1.0, cos if odd else np.ones_like(cos)
    series = np.zeros_like(cos)
    for k in range((nu - 1) // 2 if odd else nu // 2):
        if k:
            coefficient *= (2 * k) / (2 * k + 1) if odd else (2 * k - 1) / (2 * k)
            power = power * cos * cos
        series = series + coefficient * power
    inside = (2 / math.pi) * (theta + sin * series) if odd else sin * series
    return np.clip(1.0 - inside, 0.0, 1.0)


def upper_p_value(t, degrees_of_freedom):
    """The one-sided p-value of Student's t: `P(T >= t)`.

    Args:
        t: a float or an array of them; NaN gives NaN.
        degrees_of_freedom: a whole number, at least 1.

    Returns:
        A float array of `t`'s shape, in `[0, 1]`.

    Raises:
        ValueError: when `degrees_of_freedom` is not a whole number >= 1.
    """
    t = np.asarray(t, np.float64)
    half = two_sided_p_value(t, degrees_of_freedom) / 2
    return np.where(t > 0, half, 1.0 - half)
