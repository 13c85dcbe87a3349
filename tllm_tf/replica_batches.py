"""The first batch of a distributed `fit` or `evaluate` must split evenly over the replicas.

Keras builds a model from the first batch it draws, averaging the replicas'
shares of it, which fails on shares of two shapes with an `AddN` error deep
inside Keras. Later batches may split unevenly (a smaller last batch is fine:
the `Distiller` divides by the global batch size). `Distiller.fit` and
`Distiller.evaluate` refuse such a first batch up front where its size is
known: arrays, or a dataset batched with `drop_remainder=True`. Where it is not
(a dataset batched without it), `explained_uneven_first_batch` turns Keras's
failure into an error that says the same.
"""

import contextlib
import math
import re

import numpy as np
import tensorflow as tf

# What `keras.Model.fit` and `evaluate` batch arrays by without `batch_size`.
KERAS_BATCH_SIZE = 32
_WHY = "Keras builds the model from the first batch, and its replicas' shares must have one shape."
# How Keras fails on such a batch: the replicas' shares of it summed (TensorFlow's message).
_UNEVEN_SHARES = re.compile(r"AddN must have the same size and shape\.\s*"
                            r"Input 0: \[(\d+)[,\]].*?input 1: \[(\d+)[,\]]", re.DOTALL)


def check_fit(arguments, strategy):
    """Refuses a `fit` whose first training or validation batch would not split evenly.

    Args:
        arguments: `keras.Model.fit`'s arguments, bound by name.
        strategy: the model's `tf.distribute.Strategy`.

    Raises:
        ValueError: naming the batch, the replicas and the fix.
    """
    x, batch_size = arguments.get("x"), arguments.get("batch_size")
    validation_split = arguments.get("validation_split") or 0.0
    check_first_batch(x, batch_size, strategy, validation_split=validation_split)
    validation_data = arguments.get("validation_data")
    if isinstance(validation_data, (tuple, list)):
        validation_data = validation_data[0]
    validation_batch_size = arguments.get("validation_batch_size") or batch_size
    if validation_data is not None:
        check_first_batch(validation_data, validation_batch_size, strategy,
                          name="validation_data")
    elif validation_split:
        check_first_batch(x, validation_batch_size, strategy, validation_split=validation_split,
                          of_validation=True, name="x's validation_split")


def check_first_batch(x, batch_size, strategy, *, validation_split=0.0, of_validation=False,
                      name="x"):
    """Refuses `x` whose first batch would not split evenly over `strategy`'s replicas.

    Args:
        x: `fit`'s or `evaluate`'s `x`.
        batch_size: their `batch_size` argument (`None`: Keras's default).
        strategy: the model's `tf.distribute.Strategy`.
        validation_split: `fit`'s, for arrays. Defaults to `0.0`.
        of_validation: whether the batch is of the part `validation_split`
            sets aside. Defaults to `False`.
        name: what `x` is, for the message. Defaults to `"x"`.

    Raises:
        ValueError: naming the batch, the replicas and the fix.
    """
    num_replicas = strategy.num_replicas_in_sync
    if num_replicas <= 1:
        return
    first = first_batch_size(x, batch_size, validation_split, of_validation)
    if first is None or first % num_replicas == 0:
        return
    batch_size = batch_size or KERAS_BATCH_SIZE
    replicas = f"the {num_replicas} replicas of {type(strategy).__name__}"
    if first < batch_size and not isinstance(x, tf.data.Dataset):
        raise ValueError(
            f"The first batch of {name} holds all of its {first} samples (fewer than "
            f"batch_size={batch_size}), which do not split evenly over {replicas}: {_WHY} Use "
            f"a batch_size that is a multiple of {num_replicas} and at most {first}, or a "
            f"multiple of {num_replicas} samples.")
    size = (f"A batch of {first} samples" if isinstance(x, tf.data.Dataset)
            else f"batch_size={first}")
    raise ValueError(
        f"{size} (the global batch of {name}) does not split evenly over {replicas}: {_WHY} "
        f"Use a batch_size that is a multiple of {num_replicas}; a smaller last batch is fine.")


@contextlib.contextmanager
def explained_uneven_first_batch(strategy, steps=None):
    """Turns Keras's failure on a first batch the replicas cannot share into a clear error.

    For the first batches `check_fit` cannot size up front: a dataset
    batched without `drop_remainder`. Keras fails on one deep inside, with
    TensorFlow's `AddN` message; this names the batch, the replicas and the
    fix, and what was trained before it.

    Args:
        strategy: the model's `tf.distribute.Strategy`.
        steps: `fit`'s counter of the steps trained (the optimizer's
            `iterations`): a failure after steps is the validation data's.
            `None` for `evaluate`.

    Raises:
        ValueError: in place of that failure, naming the fix.
    """
    num_replicas = strategy.num_replicas_in_sync
    # One replica has no shares to split: nothing to explain, and no counter to read.
    before = None if steps is None or num_replicas <= 1 else int(steps.numpy())
    try:
        yield
    except tf.errors.InvalidArgumentError as error:
        shares = _UNEVEN_SHARES.search(str(error))
        if num_replicas <= 1 or shares is None:
            raise
        trained = 0 if before is None else int(steps.numpy()) - before
        data, kept = (("the validation data", f"The {trained} steps trained before it are kept "
                       "in the model's weights.") if trained else
                      ("x", "No step was trained."))
        raise ValueError(
            f"The first batch of {data} does not split evenly over the {num_replicas} replicas "
            f"of {type(strategy).__name__} (two of their shares hold {shares[1]} and "
            f"{shares[2]} samples): {_WHY} Batch the dataset by a multiple of {num_replicas} "
            "(a smaller last batch is fine), or with drop_remainder=True to have its size "
            f"checked before any step. {kept}") from error


def first_batch_size(x, batch_size, validation_split=0.0, of_validation=False):
    """The size of the first batch Keras draws from `x`, or `None` where unknown.

    Args:
        x: `fit`'s or `evaluate`'s `x`: arrays (a tuple, list or dict of
            them too), a `tf.data.Dataset`, or anything else (unknown).
        batch_size: the `batch_size` argument. For arrays, `None` is Keras's
            default, 32.
        validation_split: of arrays, the fraction Keras sets aside at the
            end for validation. Defaults to `0.0`.
        of_validation: whether the batch is of that part rather than of the
            rest. Defaults to `False`.

    Returns:
        An `int`, or `None`.
    """
    if isinstance(x, tf.data.Dataset):
        sizes = {getattr(spec, "shape", tf.TensorShape(None))
                 for spec in tf.nest.flatten(x.element_spec)}
        sizes = {shape[0] if shape.rank else None for shape in sizes}
        return sizes.pop() if len(sizes) == 1 else None
    arrays = tf.nest.flatten(x)
    if not arrays or not all(isinstance(a, (np.ndarray, tf.Tensor)) and a.ndim
                             for a in arrays):
        return None
    num_samples = int(arrays[0].shape[0])
    if validation_split:
        # Keras's rule: `keras.src.trainers.data_adapters.array_slicing`.
        num_train = int(math.floor(num_samples * (1.0 - validation_split)))
        num_samples = num_samples - num_train if of_validation else num_train
    return min(batch_size or KERAS_BATCH_SIZE, num_samples) or None
