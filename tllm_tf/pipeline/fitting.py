"""How every stage trains: skip it if done, resume it, fit it, write its model.

A stage's directory holds its checkpoint while it runs (resume:
`checkpointing`), its CSV history and TensorBoard logs, then its final
model and results, each written atomically; its `test_per_class.json`,
written last, marks the stage done.
"""

import os

import keras

from tllm_tf import atomic
from tllm_tf import metrics as metrics_lib
from tllm_tf.pipeline import checkpointing
from tllm_tf.pipeline import multi_worker
from tllm_tf.pipeline import stage_progress
from tllm_tf.pipeline import training_guards
from tllm_tf.pipeline import workdir as workdir_lib
from tllm_tf.pipeline.build import compile_arguments
from tllm_tf.pipeline.build import eval_batches
from tllm_tf.pipeline.build import shard_by_data
from tllm_tf.pipeline.build import steps_per_epoch
from tllm_tf.pipeline.build import train_batches
from tllm_tf.pipeline.epoch_tensorboard import EpochTensorBoard
from tllm_tf.pipeline.workdir_files import CHECKPOINT_DIR
from tllm_tf.pipeline.workdir_files import HISTORY_FILE
from tllm_tf.pipeline.workdir_files import MODEL_FILE
from tllm_tf.pipeline.workdir_files import PER_CLASS_FILE
from tllm_tf.pipeline.workdir_files import TENSORBOARD_DIR


def missing_files(stage_dir, final_files=(MODEL_FILE,)):
    """The paths a finished stage has and `stage_dir` lacks: its `final_files`, then its
    `test_per_class.json`, written last (an empty list: the stage has finished)."""
    paths = [os.path.join(stage_dir, name) for name in (*final_files, PER_CLASS_FILE)]
    return [path for path in paths if not os.path.exists(path)]


def done(strategy, stage_dir, verbose, final_files=(MODEL_FILE,)):
    """Whether the chief has the stage's `final_files` and its `test_per_class.json`,
    written after them (it then says so, unless `verbose` is 0).

    Either way the chief first removes what a killed run left in the stage's
    folder (`workdir.remove_leftovers`); if the stage is not done, it makes
    the folder.
    """

    def check():
        marker = os.path.join(stage_dir, PER_CLASS_FILE)
        finished = not missing_files(stage_dir, final_files)
        workdir_lib.remove_leftovers(stage_dir, finished)
        if finished:
            say(verbose, True, f"{os.path.basename(stage_dir)}: done, skipped ({marker})")
            return True
        os.makedirs(stage_dir, exist_ok=True)
        return False

    return multi_worker.run_on_chief(strategy, check)


def say(verbose, chief, line):
    """Prints a stage's line on the chief, unless `verbose` (`--verbose`) is 0."""
    if chief and verbose > 0:
        print(line, flush=True)


def stage_line(title, epochs, start_epoch, stage_dir):
    """A stage's opening line: what it trains, its epochs and folder, or where it resumes.

    Example:
        >>> stage_line("student_tllm: mlp_32 ...", 60, 36, "runs/demo/student_tllm")
        'student_tllm: mlp_32 ..., resuming at epoch 37 of 60 in runs/demo/student_tllm'
    """
    if not start_epoch:
        where = f"{epochs} epoch{'' if epochs == 1 else 's'} -> {stage_dir}"
    elif start_epoch < epochs:
        where = f"resuming at epoch {start_epoch + 1} of {epochs} in {stage_dir}"
    else:
        where = f"all {epochs} epochs done, finishing in {stage_dir}"
    return f"{title}, {where}"


def compile_on_labels(model, data, config, label_smoothing, learning_rate=None):
    """Compiles `model` to train on labels alone (the teacher and the reference).

    Args:
        model: the classifier, built in the strategy's scope.
        data: the run's `DataSplits`.
        config: the run's `RunConfig`.
        label_smoothing: the cross-entropy's label smoothing.
        learning_rate: the initial learning rate. Defaults to `config.learning_rate`.
    """
    # MixUp/CutMix batches carry soft label vectors, and label smoothing
    # needs one-hot labels: both take the categorical form of the loss.
    if label_smoothing > 0 or config.mixup or config.cutmix:
        loss = keras.losses.CategoricalCrossentropy(
            from_logits=True, label_smoothing=label_smoothing)
    else:
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(loss=loss, metrics=["accuracy"],
                  **compile_arguments(config, data, learning_rate))


def stage_callbacks(stage_dir, chief, start_epoch):
    """Checkpointing, NaN guard, CSV history and TensorBoard of a stage.

    Raises:
        ValueError: on the chief, if the stage's `history.csv` is a symbolic
            link (even a dangling one) or not a regular file: `CSVLogger`
            would append through it (`checkpointing.truncate_csv_history`).
    """
    callbacks = [training_guards.StopOnNonFiniteLoss()]
    if chief:
        history = os.path.join(stage_dir, HISTORY_FILE)
        checkpointing.truncate_csv_history(history, start_epoch)
        # Before the checkpoint: a run killed between the two then has an extra
        # row, which the resumed run truncates, rather than a missing one.
        callbacks += [
            keras.callbacks.CSVLogger(history, append=True),
            EpochTensorBoard(os.path.join(stage_dir, TENSORBOARD_DIR)),
        ]
    callbacks.append(
        checkpointing.EpochCheckpoint(os.path.join(stage_dir, CHECKPOINT_DIR), write=chief))
    return callbacks


def fit(model, data, config, stage_dir, chief, epochs, extra_callbacks=(), one_hot=False,
        title="", shown_metrics=("loss", "accuracy"), soft_label_store=None):
    """Fits `model`, resuming from the stage's checkpoint if there is one.

    `title` (what the stage trains) opens the stage's line, which ends with
    the epochs and the stage directory, or where it resumes; the progress bar
    shows `shown_metrics`. With a built `soft_label_store`, each batch comes
    with the teacher's stored logits, and a `Distiller` runs no teacher.
    """
    start_epoch = checkpointing.resume(model, os.path.join(stage_dir, CHECKPOINT_DIR))
    say(config.verbose, chief, stage_line(title, epochs, start_epoch, stage_dir))
    if start_epoch < epochs:
        callbacks = list(extra_callbacks) + stage_callbacks(stage_dir, chief, start_epoch)
        if chief and config.verbose > 0:
            # Last: it shows the logs as the other callbacks leave them.
            callbacks.append(stage_progress.StageProgress(
                verbose=min(config.verbose, 2), metrics=shown_metrics))
        batches = train_batches(data, config, start_epoch, epochs, one_hot)
        if soft_label_store is not None:
            batches = shard_by_data(soft_label_store.attach(batches, start_epoch, epochs))
        model.fit(
            batches,
            initial_epoch=start_epoch,
            epochs=epochs,
            steps_per_epoch=steps_per_epoch(data, config),
            callbacks=callbacks,
            verbose=0,
            # The batches are shuffled per epoch by train_batches, seeded for resume.
            shuffle=False,
        )


def finish(model, data, config, stage_dir, chief, write_results=None):
    """Ends a stage on the chief: its final model, then `write_results()` if
    given, then its `test_per_class.json`, whose presence marks the stage done
    (`done`); then it drops what only training needed (the checkpoint, from
    which a stage killed before that mark resumes; `workdir.remove_leftovers`).
    """
    if chief:
        workdir_lib.save_model(model, os.path.join(stage_dir, MODEL_FILE))
        if write_results is not None:
            write_results()
        save_per_class(model, data, config, stage_dir)
        workdir_lib.remove_leftovers(stage_dir, finished=True)


def per_class_on_test(model, data, config):
    """The model's test accuracy, overall and per class: the record of `test_per_class.json`.

    Returns:
        A dict: `class_names`, `per_class_accuracy` (`None` for a class with
        no test image), `num_samples` and `accuracy`.
    """
    counter = metrics_lib.PerClassCounter(model, data.num_classes)
    correct, total = counter(eval_batches(data.test, config))
    accuracy = metrics_lib.accuracy_from_counts(correct, total)
    return {
        "class_names": list(data.class_names),
        "per_class_accuracy": atomic.json_floats(accuracy),
        "num_samples": [int(n) for n in total],
        "accuracy": float(correct.sum() / max(total.sum(), 1)),
    }


def save_per_class(model, data, config, stage_dir):
    """Writes the model's `per_class_on_test` record to the stage's `test_per_class.json`."""
    atomic.write_json(os.path.join(stage_dir, PER_CLASS_FILE),
                      per_class_on_test(model, data, config))
