import json
import os

import numpy as np
import pytest

from tllm_tf import reference


def test_round_trip_keeps_nan(tmp_path):
    path = str(tmp_path / "sub" / "reference.json")
    reference.save_reference(path, [0.5, np.nan, 1.0], num_samples=[2, 0, 3])
    np.testing.assert_array_equal(reference.load_reference(path), [0.5, np.nan, 1.0])
    with open(path) as handle:
        record = json.load(handle)
    assert record["per_class_accuracy"][1] is None and record["num_samples"] == [2, 0, 3]
    assert os.listdir(tmp_path / "sub") == ["reference.json"]


def test_truncated_file_gets_a_clear_error_and_is_left_alone(tmp_path):
    path = str(tmp_path / "reference.json")
    reference.save_reference(path, [0.5, 0.5])
    with open(path) as handle:
        text = handle.read()
    with open(path, "w") as handle:
        handle.write(text[:20])
    with pytest.raises(ValueError, match="not valid JSON.*truncated"):
        reference.load_reference(path)
    with open(path) as handle:
        assert handle.read() == text[:20]


@pytest.mark.parametrize("content, message", [
    ({"per_class_accuracy": [1.0]}, "not a tllm_tf reference"),
    ({"format": "tllm_tf.reference", "num_classes": 3, "per_class_accuracy": [1.0]},
     "inconsistent"),
])
def test_other_json_is_rejected(tmp_path, content, message):
    path = str(tmp_path / "other.json")
    with open(path, "w") as handle:
        json.dump(content, handle)
    with pytest.raises(ValueError, match=message):
        reference.load_reference(path)


def test_missing_file_says_how_to_make_one(tmp_path):
    with pytest.raises(ValueError, match="reference` stage"):
        reference.load_reference(str(tmp_path / "missing.json"))
