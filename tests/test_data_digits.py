import collections

import numpy as np
import pytest

from tllm_tf.data import load_digits, stratified_split
from tllm_tf.data.digits import load_digits_arrays


def test_stratified_split_is_disjoint_stratified_and_seeded():
    labels = np.repeat(np.arange(5), 20)
    kept, held = stratified_split(labels, fraction=0.25, seed=3)
    assert len(np.intersect1d(kept, held)) == 0 and len(kept) + len(held) == 100
    np.testing.assert_array_equal(np.bincount(labels[held]), [5] * 5)
    np.testing.assert_array_equal(held, stratified_split(labels, fraction=0.25, seed=3)[1])
    assert not np.array_equal(held, stratified_split(labels, fraction=0.25, seed=4)[1])


@pytest.mark.parametrize("kwargs, message", [
    ({"fraction": 1.5}, "0 < fraction < 1"),
    ({"fraction": None}, "0 < fraction < 1"),
])
def test_stratified_split_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        stratified_split(np.arange(10) % 2, **kwargs)


def _rows(pairs):
    """The `(image bytes, label)` rows of `pairs`, counted: a row given twice counts twice."""
    return collections.Counter((np.asarray(image, np.float32).tobytes(), int(label))
                               for image, label in pairs)


def test_digits_splits_are_disjoint_and_cover_every_class():
    data = load_digits(test_fraction=0.2, holdout_fraction=0.2, seed=0)
    train, held, test = (list(split.as_numpy_iterator())
                         for split in (data.train, data.held_out, data.test))
    # Together the three splits are the 1,797 digits, each exactly once.
    assert _rows(train) + _rows(held) + _rows(test) == _rows(zip(*load_digits_arrays()))
    assert data.num_train == len(train)
    for split in (train, held, test):
        assert {int(label) for _, label in split} == set(range(10))
    image, _ = train[0]
    assert image.shape == (8, 8, 1) and data.image_shape == (8, 8, 1)
    assert 0 < data.mean[0] < 16 and data.std[0] > 0


def test_digits_test_split_does_not_depend_on_other_settings():
    a = load_digits(holdout_fraction=0.1, num_train=200, seed=1)
    b = load_digits(holdout_fraction=0.3, seed=1)
    first = np.stack([image.numpy() for image, _ in a.test])
    second = np.stack([image.numpy() for image, _ in b.test])
    np.testing.assert_array_equal(first, second)
    assert a.num_train == 200


def test_digits_num_train_is_exact_and_stratified():
    for num_train in (11, 10, 333):
        data = load_digits(num_train=num_train, seed=3)
        labels = np.array([int(label) for _, label in data.train])
        assert data.num_train == len(labels) == num_train
        counts = np.bincount(labels, minlength=10)
        assert counts.max() - counts.min() <= 1 + num_train // 100


def test_num_train_below_the_number_of_classes_is_refused():
    # It trained on 5 images of 10 classes without a word.
    with pytest.raises(ValueError, match=r"Expected num_train >= 10, one image per class of "
                                         r"the digits\. Received: num_train=5"):
        load_digits(num_train=5)
    assert load_digits(num_train=10).num_train == 10
