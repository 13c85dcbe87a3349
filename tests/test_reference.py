import json
import os

import keras
import numpy as np
import pytest

from tllm_tf import reference
from tllm_tf import reference_history


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


def test_per_epoch_accuracy_round_trips(tmp_path):
    path = str(tmp_path / "reference.json")
    history = [[0.25, np.nan], [0.5, 1.0], [0.75, 1.0]]
    reference.save_reference(path, history[-1], per_epoch_accuracy=history)
    np.testing.assert_array_equal(reference.load_reference_history(path), history)
    np.testing.assert_array_equal(reference.load_reference(path), [0.75, 1.0])


def test_per_epoch_accuracy_of_the_wrong_shape_is_rejected(tmp_path):
    with pytest.raises(ValueError, match=r"shape \(epochs, 2\).*\(2, 3\)"):
        reference.save_reference(
            str(tmp_path / "r.json"), [0.5, 0.5], per_epoch_accuracy=np.ones((2, 3)))


def test_history_of_a_file_without_one_says_how_to_record_it(tmp_path):
    path = str(tmp_path / "reference.json")
    reference.save_reference(path, [0.5, 0.5])
    with pytest.raises(reference.MissingHistoryError,
                       match="no per-epoch accuracy.*ReferenceHistory"):
        reference.load_reference_history(path)


def _labelled_model(seed):
    from conftest import make_mlp

    keras.utils.set_random_seed(seed)
    model = make_mlp("reference")
    model.compile(optimizer=keras.optimizers.SGD(0.1),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def test_reference_history_records_every_epoch_and_writes_the_file(tiny_data, tmp_path):
    from tllm_tf import metrics

    x, y = tiny_data
    held_out = (x[:16], y[:16])
    path = str(tmp_path / "reference.json")
    callback = reference_history.ReferenceHistory(held_out, path=path)
    model = _labelled_model(0)
    model.fit(x, y, batch_size=8, epochs=3, verbose=0, callbacks=[callback])
    assert callback.per_epoch_accuracy.shape == (3, 4)
    final = metrics.per_class_accuracy(model, held_out, 4)
    np.testing.assert_allclose(callback.per_epoch_accuracy[-1], final)
    np.testing.assert_allclose(reference.load_reference(path), final)
    np.testing.assert_allclose(reference.load_reference_history(path),
                               callback.per_epoch_accuracy)
    assert callback.num_samples.tolist() == [4, 4, 4, 4]
    assert callback.get_config() == {"num_classes": None, "path": path, "log_path": None}


def test_reference_history_starts_afresh_on_each_fit(tiny_data):
    x, y = tiny_data
    callback = reference_history.ReferenceHistory((x, y), num_classes=4)
    for epochs in (2, 1):
        _labelled_model(epochs).fit(x, y, epochs=epochs, verbose=0, callbacks=[callback])
        assert callback.per_epoch_accuracy.shape == (epochs, 4)


def test_reference_history_rejects_a_bad_num_classes(tiny_data):
    with pytest.raises(ValueError, match="num_classes >= 2. Received: num_classes=1"):
        reference_history.ReferenceHistory(tiny_data, num_classes=1)


def test_reference_history_of_a_resumed_fit_leaves_the_skipped_epochs_nan(tiny_data):
    x, y = tiny_data
    callback = reference_history.ReferenceHistory((x, y), num_classes=4)
    _labelled_model(0).fit(x, y, epochs=3, initial_epoch=1, verbose=0, callbacks=[callback])
    history = callback.per_epoch_accuracy
    assert history.shape == (3, 4)
    assert np.isnan(history[0]).all() and not np.isnan(history[1:]).any()


def test_reference_history_log_is_read_back_with_gaps_and_torn_lines_skipped(tiny_data, tmp_path):
    x, y = tiny_data
    log = str(tmp_path / "logs" / "per_epoch.jsonl")
    callback = reference_history.ReferenceHistory((x, y), log_path=log)
    _labelled_model(0).fit(x, y, epochs=3, initial_epoch=1, verbose=0, callbacks=[callback])
    with open(log, "a") as handle:
        handle.write('{"epoch": 4, "per_class_acc')  # torn by a kill
    history = reference_history.read_history_log(log, epochs=4, num_classes=4)
    np.testing.assert_array_equal(history[1:3], callback.per_epoch_accuracy[1:])
    assert np.isnan(history[0]).all() and np.isnan(history[3]).all()
    assert np.isnan(reference_history.read_history_log(str(tmp_path / "none"), 2, 4)).all()


# -- what a reference was made from (issue 11, item 8) -------------------------

PROVENANCE = {"dataset": "digits", "seed": 0, "holdout_fraction": 0.2, "num_train": None,
              "image_size": None, "student_model": "mlp_8"}


def test_provenance_round_trips_and_the_same_origin_passes(tmp_path, caplog):
    path = str(tmp_path / "reference.json")
    reference.save_reference(path, [0.5, 1.0], num_samples=[4, 6], provenance=PROVENANCE)
    with open(path) as handle:
        assert json.load(handle)["provenance"] == PROVENANCE
    with caplog.at_level("WARNING"):
        reference.check_provenance(path, PROVENANCE, num_samples=[4, 6])
    assert not caplog.text


def test_a_reference_of_another_split_or_student_is_refused_naming_each_field(tmp_path):
    path = str(tmp_path / "reference.json")
    reference.save_reference(path, [0.5, 1.0], num_samples=[4, 6], provenance=PROVENANCE)
    now = dict(PROVENANCE, seed=1, holdout_fraction=0.5, student_model="mlp_32")
    with pytest.raises(ValueError) as raised:
        reference.check_provenance(path, now, num_samples=[10, 15])
    message = str(raised.value)
    assert "reference.json' was made from another split, data set or student" in message
    for line in ("seed: 0 in the reference, 1 now",
                 "holdout_fraction: 0.2 in the reference, 0.5 now",
                 "student_model: 'mlp_8' in the reference, 'mlp_32' now",
                 "num_samples (held-out images per class): [4, 6] in the reference, [10, 15] now"):
        assert line in message
    assert "dataset:" not in message and "num_train:" not in message


def test_an_older_file_without_provenance_is_checked_by_its_counts_and_warned_about(
        tmp_path, caplog):
    path = str(tmp_path / "reference.json")
    reference.save_reference(path, [0.5, 1.0], num_samples=[4, 6])
    with caplog.at_level("WARNING"):
        reference.check_provenance(path, PROVENANCE, num_samples=[4, 6])
    assert "does not record what it was made from" in caplog.text
    assert "held-out counts, which agree" in caplog.text
    with pytest.raises(ValueError, match=r"num_samples .*\[4, 6\] in the reference, \[5, 5\] now"):
        reference.check_provenance(path, PROVENANCE, num_samples=[5, 5])


@pytest.mark.parametrize("provenance", [["seed", 0], {"seed": {"nested": 1}},
                                        {"seed": float("inf")}, {"name": "x" * 2000}])
def test_a_provenance_that_is_not_named_scalars_is_refused_naming_the_file(
        tmp_path, provenance):
    path = str(tmp_path / "reference.json")
    with pytest.raises(ValueError, match="provenance must be a dict"):
        reference.save_reference(path, [0.5, 1.0], provenance=provenance)
    with open(path, "w") as handle:
        handle.write(json.dumps({"format": reference.FORMAT, "version": 1, "num_classes": 2,
                                 "per_class_accuracy": [0.5, 1.0],
                                 "provenance": provenance}).replace("Infinity", "1e999"))
    with pytest.raises(ValueError, match=r"reference.json'.*provenance must be a dict"):
        reference.load_reference(path)
