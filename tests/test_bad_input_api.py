"""Bad input to the library's API (not the command line), refused or made visible."""

import logging

import keras
import numpy as np
import pytest
import tensorflow as tf

import tllm_tf
from tllm_tf import losses
from tllm_tf.pipeline import training_guards

NUM_CLASSES = 4


def _mlp(hidden=8, outputs=NUM_CLASSES, input_shape=(8,)):
    inputs = keras.Input(input_shape)
    hidden_units = keras.layers.Dense(hidden, activation="relu")(inputs)
    return keras.Model(inputs, keras.layers.Dense(outputs)(hidden_units))


@pytest.fixture
def data(seeded):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 8)).astype(np.float32)
    y = np.arange(32, dtype=np.int32) % NUM_CLASSES
    return x, y


def _batches(x, y, batch_size=8):
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size)


def _unchanged(model, before):
    for weight, expected in zip(model.get_weights(), before, strict=True):
        np.testing.assert_array_equal(weight, expected)


# -- keep_baseline_if_behind ----------------------------------------------------------

@pytest.mark.parametrize("significance", [5.0, float("nan"), 0.0, 1.0])
def test_a_significance_outside_zero_one_is_refused(data, significance):
    with pytest.raises(ValueError, match=rf"Expected 0 < significance < 1. Received: "
                                         rf"significance={significance}"):
        tllm_tf.keep_baseline_if_behind(_mlp(), _mlp(), _batches(*data), NUM_CLASSES,
                                        significance=significance)


@pytest.mark.parametrize("num_classes", [3, 10])
def test_num_classes_other_than_the_models_outputs_is_refused(data, num_classes):
    with pytest.raises(ValueError, match=rf"num_classes={num_classes} disagrees with the "
                                         r"student, which outputs 4 logits"):
        tllm_tf.keep_baseline_if_behind(_mlp(), _mlp(), _batches(*data), num_classes)


def test_held_out_labels_out_of_range_are_refused_before_any_weight_changes(data):
    x, y = data
    student, reference = _mlp(), _mlp()
    before = student.get_weights()
    with pytest.raises(ValueError, match=r"Held-out labels must be class ids in "
                                         r"\[0, num_classes=4\). Found 16 outside, e.g. \[4, 5"):
        tllm_tf.keep_baseline_if_behind(student, reference, _batches(x, y + 2), NUM_CLASSES,
                                        significance=0.99)
    _unchanged(student, before)


@pytest.mark.parametrize("kind, message", [
    ("empty", "The held-out data set is empty, so the student cannot be judged against the "
              "reference"),
    ("unbatched", r"The held-out data set is not batched: its images have shape \(8,\)"),
    ("other_images", r"The held-out images have shape \(9,\) but the model takes \(8,\)"),
])
def test_a_held_out_set_that_cannot_judge_is_refused(data, kind, message):
    x, y = data
    held_out = {"empty": _batches(x[:0], y[:0]),
                "unbatched": tf.data.Dataset.from_tensor_slices((x, y)),
                "other_images": _batches(np.zeros((32, 9), np.float32), y)}[kind]
    with pytest.raises(ValueError, match=message):
        tllm_tf.keep_baseline_if_behind(_mlp(), _mlp(), held_out, NUM_CLASSES)


def test_the_architecture_mismatch_names_the_first_weight_that_differs(data):
    student, wider = _mlp(hidden=8), _mlp(hidden=16)
    with pytest.raises(ValueError, match=(
            r"weight 0 of the student \('[\w/]+kernel'\) has shape \(8, 8\) and the "
            r"reference's \('[\w/]+kernel'\) \(8, 16\)\. .*same architecture")):
        tllm_tf.keep_baseline_if_behind(student, wider, _batches(*data), NUM_CLASSES)


# -- UndistillableClassCallback -----------------------------------------------------------

def _fit_with_callback(data, epochs=1, **kwargs):
    x, y = data
    distiller = tllm_tf.Distiller(_mlp(), _mlp())
    distiller.compile(optimizer="sgd")
    kwargs.setdefault("validation_data", _batches(x, y))
    kwargs.setdefault("reference", np.full(NUM_CLASSES, 0.5))
    callback = tllm_tf.UndistillableClassCallback(rule="unpaired", **kwargs)
    distiller.fit(x, y, epochs=epochs, verbose=0, callbacks=[callback])
    return distiller


@pytest.mark.parametrize("reference, message", [
    ([0.5, np.nan, 0.5, 0.5], r"per-class accuracy is NaN for classes \[1\], which have "
                              r"held-out images"),
    ([0.5, 1.5, -0.1, 0.5], r"must lie in \[0, 1\]. Received values outside at classes "
                            r"\[1, 2\]: \[1.5, -0.1\]"),
    ([[0.5, 0.5, 0.5, 0.5], [0.5, 0.5, 90.0, 0.5]], r"outside at classes \[2\]: \[90.0\]"),
])
def test_a_reference_array_of_impossible_accuracies_is_refused(data, reference, message):
    with pytest.raises(ValueError, match=message):
        _fit_with_callback(data, reference=np.array(reference))


def test_a_nan_reference_for_a_class_without_held_out_images_is_accepted(data):
    x, y = data
    without_class_3 = _batches(x[y != 3], y[y != 3])
    _fit_with_callback(data, validation_data=without_class_3,
                       reference=np.array([0.5, 0.5, 0.5, np.nan]))


def test_held_out_labels_out_of_range_are_refused_at_train_begin(data):
    x, y = data
    with pytest.raises(ValueError, match=r"Held-out labels must be class ids in "
                                         r"\[0, num_classes=4\). Found 16 outside, e.g. \[6, 7\]"):
        _fit_with_callback(data, validation_data=_batches(x, np.where(y >= 2, y + 4, y)))


def test_a_warmup_past_the_fits_last_epoch_is_warned_about(data, caplog):
    with caplog.at_level(logging.WARNING):
        _fit_with_callback(data, epochs=2, warmup_epochs=3, update_every=1)
    assert ("warmup_epochs=3 and update_every=1 put the first mask update after epoch 4, but "
            "this fit has epochs=2: the mask will never change in this fit") in caplog.text
    # Not for a warm-up the fit reaches, a warm-up of the whole fit (the refit's way of
    # keeping the mask) or a fixed mask.
    for kwargs in ({"warmup_epochs": 1, "update_every": 1}, {"warmup_epochs": 2},
                   {"warmup_epochs": 3, "masked_classes": [1]}):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            _fit_with_callback(data, epochs=2, **kwargs)
        assert "will never change" not in caplog.text


# -- Distiller ---------------------------------------------------------------------------

def test_a_teacher_of_other_inputs_is_refused_at_construction():
    with pytest.raises(ValueError, match=(
            r"Teacher and student must take inputs of the same shape.*teacher '\w+' takes "
            r"\(None, 9\), student '\w+' takes \(None, 8\)")):
        tllm_tf.Distiller(_mlp(input_shape=(8,)), _mlp(input_shape=(9,)))
    # An unknown size matches any.
    tllm_tf.Distiller(_mlp(input_shape=(None, 8)), _mlp(input_shape=(5, 8)))


@pytest.mark.parametrize("weights, message", [
    ({"beta": float("inf")}, "Expected beta >= 0 and finite. Received: beta=inf"),
    ({"alpha": float("inf")}, "Expected alpha >= 0 and finite. Received: alpha=inf"),
    ({"alpha": float("nan")}, "Expected alpha >= 0 and finite. Received: alpha=nan"),
])
def test_non_finite_loss_weights_are_refused(weights, message):
    with pytest.raises(ValueError, match=message):
        tllm_tf.Distiller(_mlp(), _mlp()).compile(optimizer="sgd", **weights)


def test_one_nan_pixel_stops_training_on_a_non_finite_loss(data):
    # With oneDNN (TensorFlow's default on x86) the fused matmul + ReLU maps the NaN to 0:
    # the loss stays finite, while the gradient makes the first layer's kernel NaN.
    x, y = data
    x = x.copy()
    x[0, 0] = np.nan
    distiller = tllm_tf.Distiller(_mlp(), _mlp())
    distiller.compile(optimizer="adam")
    with pytest.raises(training_guards.NonFiniteLossError, match="epoch 1, step 1"):
        distiller.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0,
                      callbacks=[training_guards.StopOnNonFiniteLoss()])


class _NaNGradient(keras.layers.Layer):
    """Adds `sqrt(0 * w^2)` = 0 to its input, whose gradient in `w` is NaN (inf * 0)."""

    def build(self, input_shape):
        self.w = self.add_weight(shape=(), initializer="ones")

    def call(self, inputs):
        return inputs + keras.ops.sqrt(0.0 * keras.ops.square(self.w))


def test_a_step_that_makes_a_weight_nan_logs_a_nan_loss(data):
    x, y = data
    inputs = keras.Input((8,))
    student = keras.Model(inputs, _NaNGradient()(keras.layers.Dense(NUM_CLASSES)(inputs)))
    distiller = tllm_tf.Distiller(student, _mlp())
    distiller.compile(optimizer="sgd")
    history = distiller.fit(x, y, batch_size=32, epochs=1, verbose=0)
    assert np.isnan(history.history["loss"][0])
    # The other logs are the step's own: the loss terms were finite.
    assert np.isfinite(history.history["student_loss"][0])


def test_a_plain_keras_model_whose_weights_turn_nan_under_a_finite_loss_is_stopped(data):
    # The teacher and reference stages train plain Keras models: the guard checks their
    # weights at each epoch's end, before the checkpoint callback could keep them.
    x, y = data
    inputs = keras.Input((8,))
    model = keras.Model(inputs, _NaNGradient()(keras.layers.Dense(NUM_CLASSES)(inputs)))
    model.compile(optimizer="sgd",
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    with pytest.raises(training_guards.NonFiniteLossError,
                       match=r"weights became NaN or infinite in epoch 1 \(.*\), though "
                             r"the loss stayed finite. Training stopped; no epoch had "
                             r"finished, so there is no checkpoint to keep"):
        model.fit(x, y, batch_size=32, epochs=3, verbose=0,
                  callbacks=[training_guards.StopOnNonFiniteLoss()])


# -- the models a Distiller is given ----------------------------------------------------

def _with_head(head, name="prob_teacher"):
    inputs = keras.Input((8,))
    hidden = keras.layers.Dense(8, activation="relu")(inputs)
    return keras.Model(inputs, head(hidden), name=name)


@pytest.mark.parametrize("head", [
    lambda h: keras.layers.Dense(NUM_CLASSES, activation=tf.nn.softmax)(h),
    lambda h: keras.layers.Activation(tf.nn.softmax)(keras.layers.Dense(NUM_CLASSES)(h)),
    lambda h: keras.layers.Lambda(keras.ops.softmax)(keras.layers.Dense(NUM_CLASSES)(h)),
    lambda h: keras.layers.Identity()(keras.layers.Dense(NUM_CLASSES, activation="softmax")(h)),
    lambda h: keras.layers.Rescaling(1.0)(keras.layers.Dense(NUM_CLASSES, activation="softmax")(h)),
], ids=["tf_nn_softmax", "activation_layer", "lambda", "identity_after", "rescaling_after"])
def test_a_softmax_written_any_way_is_refused_by_the_probe(seeded, head):
    with pytest.raises(ValueError, match=r"teacher 'prob_teacher' outputs probabilities.*"
                                         r"remove the softmax.*returns logits"):
        tllm_tf.Distiller(_mlp(), _with_head(head))


def test_a_fresh_logits_model_is_not_refused_by_the_probe(seeded):
    # Its logits on zeros are exactly 0 (zero biases): rows that sum to 0, not 1.
    distiller = tllm_tf.Distiller(_mlp(), _mlp())
    assert distiller.num_classes == NUM_CLASSES


def test_models_the_probe_cannot_feed_are_not_probed(seeded):
    # Text in: no batch of zeros and ones can be made; the first step reports any problem.
    def text_model():
        inputs = keras.Input((1,), dtype="string")
        one_hot = keras.layers.StringLookup(vocabulary=["a", "b"], output_mode="one_hot")(inputs)
        return keras.Model(inputs, keras.layers.Dense(NUM_CLASSES)(one_hot))

    assert tllm_tf.Distiller(text_model(), text_model()).num_classes == NUM_CLASSES


class _Subclassed(keras.Model):
    def __init__(self, outputs):
        super().__init__()
        self.hidden = keras.layers.Dense(8, activation="relu")
        self.logits = keras.layers.Dense(outputs)

    def call(self, inputs):
        return self.logits(self.hidden(inputs))


def test_a_built_subclassed_teacher_of_other_classes_is_refused_at_construction(seeded):
    teacher = _Subclassed(5)
    teacher(np.zeros((1, 8), np.float32))
    with pytest.raises(ValueError, match=r"same classes.*teacher .* outputs 5, student .* "
                                         r"outputs 4"):
        tllm_tf.Distiller(_mlp(), teacher)


@pytest.mark.parametrize("shared, count", [("same_model", 4), ("teachers_layers", 2)])
def test_a_student_that_trains_the_teachers_weights_is_refused(seeded, shared, count):
    teacher = _mlp()
    student = teacher
    if shared == "teachers_layers":
        inputs = keras.Input((8,))
        student = keras.Model(inputs, keras.layers.Dense(NUM_CLASSES)(
            teacher.layers[1](inputs)))
    with pytest.raises(ValueError, match=rf"trains {count} weights of the teacher.*freeze"):
        tllm_tf.Distiller(student, teacher)
    assert len(student.trainable_weights) == 4  # Refused before freezing anything.


def test_a_student_without_trainable_weights_is_warned_about_as_keras_does(data):
    student = _mlp()
    student.trainable = False
    distiller = tllm_tf.Distiller(student, _mlp())
    distiller.compile(optimizer="sgd")
    with pytest.warns(UserWarning, match=r"does not have any trainable weights"):
        distiller.fit(*data, epochs=1, verbose=0)


def test_a_student_loss_of_the_batch_mean_is_refused(data):
    def mean_cross_entropy(labels, logits):
        return keras.ops.mean(keras.losses.sparse_categorical_crossentropy(
            labels, logits, from_logits=True))

    distiller = tllm_tf.Distiller(_mlp(), _mlp())
    distiller.compile(optimizer="sgd", student_loss_fn=mean_cross_entropy)
    with pytest.raises(ValueError, match=r"student_loss_fn mean_cross_entropy to return one "
                                         r"loss per sample.*Received shape \(\)"):
        distiller.evaluate(*data, verbose=0)


def test_a_policy_that_returns_more_than_one_value_per_sample_is_refused(data, monkeypatch):
    # A (batch, 1) result broadcast against the (batch,) label term: a (batch, batch) loss,
    # trained on without a word.
    def with_an_axis(inputs):
        return keras.ops.expand_dims(tllm_tf.policies.hard_label(inputs), -1)

    monkeypatch.setitem(tllm_tf.policies.POLICIES, "with_an_axis", with_an_axis)
    distiller = tllm_tf.Distiller(_mlp(), _mlp())
    distiller.compile(optimizer="sgd", masked_class_policy="with_an_axis")
    with pytest.raises(ValueError, match=r"masked_class_policy 'with_an_axis' to return one "
                                         r"loss per sample.*Received shape \(\d+, 1\)"):
        distiller.fit(*data, epochs=1, verbose=0)
    assert int(distiller.optimizer.iterations) == 0


# -- labels ------------------------------------------------------------------------------

@pytest.mark.parametrize("with_weights", [False, True])
def test_validation_labels_out_of_range_are_refused_before_any_step(data, with_weights):
    x, y = data
    distiller = tllm_tf.Distiller(_mlp(), _mlp())
    distiller.compile(optimizer="sgd")
    validation_data = (x, np.full_like(y, 7)) + ((np.ones(len(x)),) if with_weights else ())
    with pytest.raises(ValueError, match=r"Validation labels must be class ids in \[0, "
                                         r"num_classes=4\)"):
        distiller.fit(x, y, validation_data=validation_data, epochs=1, verbose=0)
    assert int(distiller.optimizer.iterations) == 0


def test_evaluate_labels_out_of_range_are_refused_up_front(data):
    x, y = data
    distiller = tllm_tf.Distiller(_mlp(), _mlp())
    distiller.compile(optimizer="sgd")
    with pytest.raises(ValueError, match=r"Labels must be class ids in \[0, num_classes=4\)"):
        distiller.evaluate(x, np.full_like(y, 7), verbose=0)


def test_labels_of_unknown_rank_get_the_shape_message(data):
    x, y = data
    labels = tf.data.Dataset.from_tensor_slices(y).batch(8).map(
        lambda batch: tf.numpy_function(lambda values: values, [batch], tf.int32))
    batches = tf.data.Dataset.zip(
        (tf.data.Dataset.from_tensor_slices(x).batch(8), labels))
    distiller = tllm_tf.Distiller(_mlp(), _mlp())
    distiller.compile(optimizer="sgd")
    with pytest.raises(ValueError, match=r"Received labels of unknown rank.*tf.ensure_shape"):
        distiller.fit(batches, epochs=1, verbose=0)


# -- saving --------------------------------------------------------------------------------

class _UnregisteredLoss(losses.LogitDistillationLoss):
    function = staticmethod(losses.kd_loss)


def test_saving_an_unregistered_distillation_loss_warns_how_to_load_it(tmp_path):
    # The file names the class: Keras loads it with custom_objects, so it is not refused
    # (nor is to_json, clone_model or a ModelCheckpoint of the whole model).
    distiller = tllm_tf.Distiller(_mlp(), _mlp())
    distiller.compile(optimizer="sgd", distillation_loss_fn=_UnregisteredLoss(temperature=2.0))
    path = tmp_path / "distiller.keras"
    with pytest.warns(UserWarning, match=r"distillation_loss_fn=.* load the file with "
                                         r"keras.saving.load_model\(path, custom_objects="
                                         r"\{'_UnregisteredLoss': _UnregisteredLoss\}\)"):
        distiller.save(path)
    distiller.to_json()
    loaded = keras.saving.load_model(path, custom_objects={"_UnregisteredLoss": _UnregisteredLoss})
    assert type(loaded.distillation_loss_fn) is _UnregisteredLoss


def test_a_stopped_stage_names_the_checkpoint_it_keeps_or_that_there_is_none():
    assert training_guards._kept(0) == "no epoch had finished, so there is no checkpoint to keep"
    assert training_guards._kept(3) == "the last checkpoint (end of epoch 3) is kept"
