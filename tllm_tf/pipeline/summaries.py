"""TensorBoard summaries that Keras's own TensorBoard callback does not write."""

import keras
import numpy as np
import tensorflow as tf


class PerClassAccuracySummary(keras.callbacks.Callback):
    """Writes held-out per-class accuracy and the class mask to TensorBoard.

    Reads what an `UndistillableClassCallback` measured at the epoch's end
    (place this callback after it), so nothing is evaluated twice.

    Args:
        identification: the `UndistillableClassCallback` of the same fit.
        log_dir: TensorBoard log directory.
        class_names: one name per class. Defaults to the class ids.
    """

    def __init__(self, identification, log_dir, class_names=None):
        super().__init__()
        self.identification = identification
        self.log_dir = log_dir
        self.class_names = class_names
        self._writer = None

    def on_train_begin(self, logs=None):
        self._writer = tf.summary.create_file_writer(self.log_dir)

    def on_epoch_end(self, epoch, logs=None):
        accuracy = self.identification.student_accuracy
        if accuracy is None:
            return
        names = self.class_names or [str(c) for c in range(len(accuracy))]
        mask = keras.ops.convert_to_numpy(self.model.class_mask)
        with self._writer.as_default(step=epoch):
            for name, value in zip(names, accuracy):
                if not np.isnan(value):
                    tf.summary.scalar(f"held_out_accuracy/{name}", value)
            tf.summary.histogram("class_mask", mask)
            tf.summary.scalar("num_undistillable_classes", float(np.sum(mask <= 0)))
        self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
