"""Stratified, seeded splits of labelled data.

The held-out split that drives TLLM's class selection is carved out of the
*training* data: choosing the undistillable classes on the test split would
leak the test set into training.
"""

import numpy as np


def stratified_split(labels, fraction, seed=0):
    """Splits example indices into (kept, held_out), stratified by class.

    Args:
        labels: 1-D integer array of class ids.
        fraction: share of each class that goes to the held-out part, in
            `(0, 1)`, rounded; every class keeps at least one example on the
            kept side.
        seed: seed of the shuffle. Defaults to `0`.

    Returns:
        `(kept_indices, held_out_indices)`, two sorted int64 arrays.

    Raises:
        ValueError: on a bad fraction, or labels that are not 1-D.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"Expected 1-D labels. Received shape {labels.shape}.")
    if fraction is None or not 0.0 < fraction < 1.0:
        raise ValueError(f"Expected 0 < fraction < 1. Received: fraction={fraction}")
    rng = np.random.default_rng(seed)
    held_out = []
    for class_id in np.unique(labels):
        members = np.flatnonzero(labels == class_id)
        rng.shuffle(members)
        n_held = min(int(round(fraction * len(members))), len(members) - 1)
        held_out.append(members[:n_held])
    held_out = np.sort(np.concatenate(held_out)).astype(np.int64)
    kept = np.setdiff1d(np.arange(len(labels), dtype=np.int64), held_out)
    return kept, held_out
