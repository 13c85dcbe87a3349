import math

import numpy as np
import pytest

from tllm_tf import identification as rule_lib


def _brute_force_tail(k, n):
    return sum(math.comb(n, j) for j in range(k, n + 1)) / 2**n


def test_binomial_upper_tail_is_exact():
    for n in range(0, 13):
        for k in range(0, n + 1):
            got = rule_lib.binomial_upper_tail(np.array([k]), np.array([n]))[0]
            assert got == pytest.approx(_brute_force_tail(k, n) if n else 1.0, rel=1e-12)
    # Large counts stay finite and accurate (log-space sum).
    assert rule_lib.binomial_upper_tail(np.array([1100]), np.array([2000]))[0] == pytest.approx(
        _brute_force_tail(1100, 2000), rel=1e-9)


@pytest.mark.parametrize("correction, expected", [
    ("none", [True, True, True, False, False]),
    # Holm: 0.001 <= 0.05/4, 0.02 > 0.05/3 stops the step-down.
    ("holm", [True, False, False, False, False]),
    # BH: the largest k with p_(k) <= 0.05 k / 4 is k = 3 (0.03 <= 0.0375).
    ("benjamini_hochberg", [True, True, True, False, False]),
])
def test_reject_corrections(correction, expected):
    p_values = [0.001, 0.02, 0.03, 0.5, np.nan]
    np.testing.assert_array_equal(rule_lib.reject(p_values, 0.05, correction), expected)


@pytest.mark.parametrize("level", [0.05, 0.005, 0.0005])
def test_smallest_detectable_gap_is_the_first_gap_the_test_rejects(level):
    trials = np.array([0, 3, 4, 9, 10, 11, 60, 141])
    gaps = rule_lib.smallest_detectable_gap(trials, level)
    for n, gap in zip(trials, gaps):
        rejected = [2 * b - n for b in range(n + 1)
                    if rule_lib.binomial_upper_tail(np.array([b]), np.array([n]))[0] <= level]
        if rejected:
            assert gap == min(rejected)
        else:  # Even b = n is not enough: 2 ** -n > level.
            assert np.isnan(gap) and 0.5 ** n > level
    assert rule_lib.smallest_detectable_gap(np.array([[60, 141]]), 0.0005).shape == (1, 2)


def test_discordant_counts():
    student = np.array([1, 0, 0, 1, 1, 0], bool)
    reference = np.array([1, 1, 1, 0, 1, 0], bool)
    labels = np.array([0, 0, 1, 1, 2, 2])
    behind, ahead = rule_lib.discordant_counts(student, reference, labels, 4)
    np.testing.assert_array_equal(behind, [1, 1, 0, 0])
    np.testing.assert_array_equal(ahead, [0, 1, 0, 0])


def _paired(behind, ahead, num_samples=100):
    behind, ahead = np.asarray(behind), np.asarray(ahead)
    count = np.full(behind.shape, num_samples)
    return rule_lib.Evidence(count, np.full(behind.shape, 0.9), np.full(behind.shape, 0.9),
                             behind_counts=behind, ahead_counts=ahead)


def _options(**overrides):
    """The rule's options, plain: one update decides, nothing sticks."""
    options = dict(rule="paired", significance=0.05, correction="holm", margin=0.0,
                   margin_standard_errors=0.0, smoothing=0.0, patience=1, sticky=False,
                   min_samples=1)
    return rule_lib.RuleOptions(**{**options, **overrides})


def _run(options, evidences, num_classes=4):
    state = rule_lib.IdentificationState.initial(num_classes)
    masks = []
    for evidence in evidences:
        state, masked, _ = rule_lib.update(state, evidence, options)
        masks.append(masked.astype(int).tolist())
    return masks, state


@pytest.mark.parametrize("correction, expected", [
    ("holm", [1, 0, 0, 0]),  # 1/32 > 0.05/3 stops the step-down.
    ("benjamini_hochberg", [1, 0, 0, 0]),  # p_(k) <= 0.05 k / 4 for k = 1 only: 1/32 > 0.025.
    ("none", [1, 0, 1, 0]),
])
def test_paired_rule_masks_a_real_gap_and_not_noise(correction, expected):
    options = _options(correction=correction)
    # Class 0: 20 images lost, none won (p ~ 1e-6); class 1: 6 lost, 2 won
    # (p = 0.14, noise); class 2: 5 lost, 0 won (p = 1/32: behind only uncorrected).
    masks, _ = _run(options, [_paired([20, 6, 5, 0], [0, 2, 0, 3])])
    assert masks == [expected]


def test_paired_margin_needs_the_gap_too():
    options = _options(margin=0.25)
    masks, _ = _run(options, [_paired([20, 40, 0, 0], [0, 0, 0, 0])])
    assert masks == [[0, 1, 0, 0]]


def test_paired_rule_without_counts_says_what_to_pass():
    evidence = rule_lib.Evidence(np.full(4, 10), np.full(4, 0.5), np.full(4, 0.6))
    with pytest.raises(ValueError, match="per-image results"):
        rule_lib.update(rule_lib.IdentificationState.initial(4), evidence,
                        _options())


def test_min_samples_leaves_small_classes_alone():
    options = _options(min_samples=200)
    masks, _ = _run(options, [_paired([20, 0, 0, 0], [0, 0, 0, 0])])
    assert masks == [[0, 0, 0, 0]]


def test_paired_score_gaps_by_hand():
    student = np.array([0.5, 0.7, 0.9, 0.1, 0.3, 0.2])
    reference = np.array([0.6, 0.9, 0.9, 0.4, 0.3, 0.2])
    labels = np.array([0, 0, 0, 1, 2, 2])
    gaps = rule_lib.paired_score_gaps(student, reference, labels, 4)
    # Class 0's differences 0.1, 0.2, 0: mean 0.1, sample std 0.1; classes 1 and 3 have fewer
    # than two images; class 2's differences are all 0.
    np.testing.assert_allclose(gaps[:, 0], [0.1, 0.1 / np.sqrt(3)])
    np.testing.assert_array_equal(gaps[:, 2], [0.0, 0.0])
    assert np.isnan(gaps[:, [1, 3]]).all()


def test_capped_score_gaps_count_confidently_right_images_as_ties():
    student = np.array([0.95, 0.6, 0.5, 0.99])
    reference = np.array([0.99, 0.99, 0.3, 0.92])
    labels = np.array([0, 0, 1, 1])
    gaps = rule_lib.paired_score_gaps(student, reference, labels, 2, cap=0.9)
    # Capped at 0.9: class 0's differences 0 and 0.3, class 1's -0.2 and 0.
    np.testing.assert_allclose(gaps[0], [0.15, -0.1])
    np.testing.assert_allclose(gaps[1], [0.15, 0.1])
    uncapped = rule_lib.paired_score_gaps(student, reference, labels, 2)
    np.testing.assert_allclose(uncapped[0], [0.215, -0.135])
    assert rule_lib.score_cap("paired_capped") == rule_lib.CAPPED_SCORE == 0.9
    assert rule_lib.score_cap("paired_calibrated") == 1.0
    assert rule_lib.reads_scores("paired_capped")


def _calibrated(mean_gap, standard_error, num_samples=100):
    mean_gap = np.asarray(mean_gap, np.float64)
    count = np.full(mean_gap.shape, num_samples)
    return rule_lib.Evidence(count, np.full(mean_gap.shape, 0.9), np.full(mean_gap.shape, 0.9),
                             score_gaps=np.stack([mean_gap, np.asarray(standard_error)]))


def test_the_calibrated_rule_tests_the_mean_gap_in_standard_errors():
    options = _options(rule="paired_calibrated")
    # t = 5 (p ~ 1e-6), 1 (noise), -5 (the student ahead) and a class of equal scores.
    evidence = _calibrated([0.05, 0.01, -0.05, 0.0], [0.01, 0.01, 0.01, 0.0])
    state, masked, p_values = rule_lib.update(
        rule_lib.IdentificationState.initial(4), evidence, options)
    np.testing.assert_array_equal(masked, [True, False, False, False])
    assert p_values[0] < 1e-5 and 0.1 < p_values[1] < 0.2 and p_values[2] > 0.99
    assert p_values[3] == 1.0
    # What the smoothing keeps between updates: the gaps and their standard errors.
    np.testing.assert_allclose(state.smoothed, evidence.score_gaps)


def test_the_calibrated_rule_with_a_margin_and_too_few_images():
    evidence = _calibrated([0.05, 0.2, 0.0, 0.0], [0.01, 0.04, 0.01, 0.01])
    masks, _ = _run(_options(rule="paired_calibrated", margin=0.1), [evidence])
    assert masks == [[0, 1, 0, 0]]
    masks, _ = _run(_options(rule="paired_calibrated", min_samples=101), [evidence])
    assert masks == [[0, 0, 0, 0]]


def test_the_calibrated_rule_without_scores_says_what_to_pass():
    with pytest.raises(ValueError, match="calibrated score.*rule='paired'"):
        rule_lib.update(rule_lib.IdentificationState.initial(4), _paired([1] * 4, [0] * 4),
                        _options(rule="paired_calibrated"))
    assert rule_lib.reads_scores("paired_calibrated")
    assert not rule_lib.reads_scores("paired") and rule_lib.reads_per_image_results(
        "paired_calibrated")


def _unpaired(student, reference=(0.5, 0.5, 0.5, 0.5), num_samples=(10, 10, 10, 10)):
    return rule_lib.Evidence(np.asarray(num_samples, float), np.asarray(student, float),
                             np.asarray(reference, float))


def test_unpaired_margin_min_samples_and_missing_reference():
    options = _options(rule="unpaired", margin=0.05, min_samples=5)
    evidence = _unpaired([0.86, 0.84, 0.0, 0.1], [0.9, 0.9, np.nan, 0.9], (10, 10, 10, 4))
    masks, _ = _run(options, [evidence])
    # 0.86 is within the margin; 0.84 is not; class 2 has no reference;
    # class 3 has too few held-out samples to be judged.
    assert masks == [[0, 1, 0, 0]]


@pytest.mark.parametrize("sticky, expected", [(True, [1, 0, 0, 0]), (False, [0, 0, 0, 0])])
def test_sticky_keeps_a_masked_class_masked(sticky, expected):
    options = _options(rule="unpaired", sticky=sticky)
    masks, _ = _run(options, [_unpaired([0.4, 0.6, 0.6, 0.6]), _unpaired([0.6] * 4)])
    assert masks == [[1, 0, 0, 0], expected]


def test_smoothing_averages_over_updates():
    plain = _options(rule="unpaired")
    smooth = _options(rule="unpaired", smoothing=0.5)
    evidences = [_unpaired([0.8, 0.4, 0.6, 0.6]), _unpaired([0.3, 0.4, 0.6, 0.45])]
    assert _run(plain, evidences)[0] == [[0, 1, 0, 0], [1, 1, 0, 1]]
    # Moving averages: 0.55, 0.4, 0.6, 0.525; only class 1 stays below 0.5.
    assert _run(smooth, evidences)[0] == [[0, 1, 0, 0], [0, 1, 0, 0]]


def test_patience_needs_consecutive_updates_behind():
    options = _options(rule="unpaired", patience=2)
    masks, _ = _run(options, [
        _unpaired([0.4, 0.4, 0.6, 0.6]), _unpaired([0.4, 0.6, 0.4, 0.6]),
        _unpaired([0.4, 0.4, 0.6, 0.6]), _unpaired([0.6, 0.4, 0.6, 0.6])])
    assert masks == [[0, 0, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0]]


def test_margin_in_standard_errors():
    # n = 50: for accuracies 0.86 / 0.9 the pooled p is (50 * 0.88 + 1) / 52,
    # se = sqrt(2 p (1 - p) / 50) = 0.0684; for 0.98 / 1.0 it is 0.0336.
    evidence = _unpaired([0.86, 0.80, 0.98, 0.94], [0.9, 0.9, 1.0, 1.0], (50,) * 4)
    assert _run(_options(rule="unpaired"), [evidence])[0] == [[1, 1, 1, 1]]
    guarded = _options(rule="unpaired", margin_standard_errors=1.0)
    assert _run(guarded, [evidence])[0] == [[0, 1, 0, 1]]
    both = _options(rule="unpaired", margin_standard_errors=1.0, margin=0.03)
    assert _run(both, [evidence])[0] == [[0, 0, 0, 0]]


def test_state_round_trips_through_one_array():
    options = _options(rule="unpaired", smoothing=0.5, patience=3, sticky=True)
    _, state = _run(options, [_unpaired([0.4, 0.6, np.nan, 0.2])])
    restored = rule_lib.IdentificationState.from_array(state.to_array())
    np.testing.assert_array_equal(restored.streak, state.streak)
    np.testing.assert_allclose(restored.smoothed, state.smoothed, rtol=1e-6)
    np.testing.assert_array_equal(restored.masked, state.masked)
    # Continuing from the restored state equals continuing from the original.
    next_evidence = _unpaired([0.4, 0.4, 0.4, 0.4])
    a = rule_lib.update(state, next_evidence, options)[1]
    b = rule_lib.update(restored, next_evidence, options)[1]
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kwargs, message", [
    ({"rule": "bayes"}, "rule in"),
    ({"correction": "bonferroni"}, "correction in"),
    ({"significance": 0.0}, "0 < significance < 1"),
    ({"smoothing": 1.0}, "0 <= smoothing < 1"),
    ({"patience": 0}, "patience >= 1"),
    ({"margin": -0.1}, "margin >= 0"),
    ({"min_samples": 0}, "min_samples >= 1"),
])
def test_options_are_validated(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _options(**kwargs)


def test_options_have_no_defaults_of_their_own():
    # The callback's signature is where the defaults users get live.
    with pytest.raises(TypeError, match="missing"):
        rule_lib.RuleOptions(rule="paired")
