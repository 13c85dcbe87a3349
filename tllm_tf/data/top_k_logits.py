"""Teacher logits kept as their top k plus the log-sum-exp of the rest.

The compressed form of a logit vector `z` over `C` classes, with `K` its k
largest classes and `R` the other `C - k`:

* `top_logits`: `z[K]`, largest first, and `top_classes`: `K`;
* `rest_logsumexp`: `r = log(sum(exp(z[R])))`, `-inf` when `k = C`.

`reconstruct` gives back a full vector `z_hat`: `z_hat[K] = z[K]`, and every
class of `R` gets `r - log(C - k)`. The rest then holds its exact total
`exp(r)`, so the normaliser `sum(exp(z_hat))` equals `sum(exp(z))` and, at
temperature 1, `softmax(z_hat)` equals `softmax(z)` on every top class and
on the rest's total mass; only how that mass splits among the rest's classes
is lost (uniform instead). At a temperature `T != 1` the ratios among the top
classes stay exact (`exp((z_i - z_j) / T)`), but the rest's tempered mass is
`(C - k)^(1 - 1/T) exp(r / T)`, which for `T > 1` is the largest value
`sum(exp(z[R] / T))` can take with total `exp(r)` (power-mean inequality;
equal when the rest's logits are equal): the tempered rest gets at least its
true mass and the top classes at most theirs. With `k = C` nothing is
spread and `z_hat = z`. See docs/soft_label_store.md for the measured error.
"""

import math

import numpy as np
import tensorflow as tf

_FLOAT16_MAX = 65504.0


def compress(logits, top_k):
    """Splits logits into their top `top_k` and the log-sum-exp of the rest.

    Args:
        logits: float tensor `(batch, num_classes)`.
        top_k: number of classes kept, `1 <= top_k <= num_classes`.

    Returns:
        `(top_logits, top_classes, rest_logsumexp)`: float32 `(batch, top_k)`
        largest first, int32 `(batch, top_k)`, float32 `(batch,)` (`-inf`
        when `top_k = num_classes`).
    """
    logits = tf.cast(logits, tf.float32)
    top_logits, top_classes = tf.math.top_k(logits, k=top_k, sorted=True)
    is_top = tf.reduce_any(
        tf.one_hot(top_classes, tf.shape(logits)[-1], dtype=tf.bool, on_value=True,
                   off_value=False), axis=1)
    rest = tf.where(is_top, tf.constant(-np.inf, tf.float32), logits)
    return top_logits, top_classes, tf.reduce_logsumexp(rest, axis=-1)


def reconstruct(top_logits, top_classes, rest_logsumexp, num_classes):
    """The full logit vectors of `compress`'s output (see the module docstring).

    Args:
        top_logits: float array `(batch, k)`.
        top_classes: integer array `(batch, k)`.
        rest_logsumexp: float array `(batch,)`.
        num_classes: number of classes `C >= k`.

    Returns:
        A float32 numpy array `(batch, num_classes)`.
    """
    top_logits = np.asarray(top_logits, np.float32)
    rest_logsumexp = np.asarray(rest_logsumexp, np.float32)
    spread = rest_logsumexp - np.float32(math.log(max(num_classes - top_logits.shape[-1], 1)))
    full = np.repeat(spread[:, None], num_classes, axis=1)
    np.put_along_axis(full, np.asarray(top_classes, np.int64), top_logits, axis=1)
    return full


def to_storage(values, dtype):
    """`values` as a numpy array of `dtype`, float16 clipped to its finite range.

    A logit beyond +-65504 would become infinite in float16; clipping keeps
    its sign and keeps the reconstruction finite.
    """
    values = np.asarray(values, np.float32)
    if dtype == "float16":
        values = np.where(np.isfinite(values), np.clip(values, -_FLOAT16_MAX, _FLOAT16_MAX),
                          values)
    return values.astype(dtype)


def class_dtype(num_classes):
    """The smallest integer dtype that holds a class id."""
    return np.uint8 if num_classes <= 256 else np.uint16 if num_classes <= 65536 else np.int32
