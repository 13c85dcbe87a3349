"""Tests of Student's t tail probabilities (`tllm_tf.student_t`)."""

import numpy as np
import pytest

from tllm_tf import student_t
from tllm_tf.analysis import study_stats


@pytest.mark.parametrize("degrees_of_freedom", [1, 2, 3, 4, 9, 19, 30, 39, 120])
def test_the_t_p_value_is_students(degrees_of_freedom):
    t = np.array([0.0, 0.3, 1.0, 2.5, 7.0, -2.5])
    p = student_t.two_sided_p_value(t, degrees_of_freedom)
    if degrees_of_freedom == 1:  # Cauchy, in closed form.
        np.testing.assert_allclose(p, 1 - 2 * np.arctan(np.abs(t)) / np.pi, atol=1e-12)
    if degrees_of_freedom == 2:
        np.testing.assert_allclose(p, 1 - np.abs(t) / np.sqrt(2 + t ** 2), atol=1e-12)
    assert p[0] == 1.0 and p[3] == p[5] and np.all(np.diff(p[:5]) < 0)
    # At the 97.5% quantile, 5%: the tables' three decimals, the expansion's 1e-4 beyond 30.
    quantile = study_stats.t_quantile_975(degrees_of_freedom)
    assert student_t.two_sided_p_value(quantile, degrees_of_freedom) == pytest.approx(
        0.05, abs=2e-4)


def test_the_t_p_value_of_extremes_and_bad_degrees_of_freedom():
    np.testing.assert_array_equal(
        student_t.two_sided_p_value([np.inf, -np.inf, np.nan], 5), [0.0, 0.0, np.nan])
    for bad in (0, 2.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="whole degrees of freedom"):
            student_t.two_sided_p_value(1.0, bad)


@pytest.mark.parametrize("degrees_of_freedom", [1, 2, 7, 599])
def test_the_upper_p_value_is_one_tail(degrees_of_freedom):
    t = np.array([-3.0, -0.5, 0.0, 0.5, 3.0, np.nan])
    upper = student_t.upper_p_value(t, degrees_of_freedom)
    two_sided = student_t.two_sided_p_value(t, degrees_of_freedom)
    np.testing.assert_allclose(upper[3:5], two_sided[3:5] / 2)
    # The two tails of a symmetric distribution add up to one.
    np.testing.assert_allclose(upper[:2] + upper[[4, 3]], 1.0)
    assert upper[2] == 0.5 and np.isnan(upper[5])
    if degrees_of_freedom == 1:  # Cauchy: P(T >= 1) = 1/4.
        assert student_t.upper_p_value(1.0, 1) == pytest.approx(0.25, abs=1e-12)
