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


def _largest_remainder(counts, size):
    """Shares `size` among classes of `counts` members in proportion, exactly.

    Each class gets the floor of its share, then the classes with the largest
    remainders one more each (ties to the lower class id) until `size` is met.
    Integer arithmetic, so a share that divides evenly is never rounded.
    """
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    shares = [size * int(count) // total for count in counts]
    remainders = [size * int(count) % total for count in counts]
    order = sorted(range(len(counts)), key=lambda c: -remainders[c])
    for class_index in order[: size - sum(shares)]:
        shares[class_index] += 1
    return shares


def stratified_subset(labels, size, seed=0):
    """Picks exactly `size` example indices, stratified by class.

    Each class gives its share of `size` in proportion to its count, the
    shares rounded by largest remainder so they add up to `size`. Where the
    shares divide evenly, the pick is the held-out part of
    `stratified_split(labels, fraction=size / len(labels), seed=seed)`.

    Args:
        labels: 1-D integer array of class ids.
        size: number of indices picked, in `[1, len(labels)]`.
        seed: seed of the shuffle. Defaults to `0`.

    Returns:
        A sorted int64 array of `size` indices into `labels`.

    Raises:
        ValueError: on a bad size, or labels that are not 1-D.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"Expected 1-D labels. Received shape {labels.shape}.")
    if not 1 <= size <= len(labels):
        raise ValueError(
            f"Expected 1 <= size <= {len(labels)} (the number of labels). Received: size={size}")
    rng = np.random.default_rng(seed)
    class_ids, counts = np.unique(labels, return_counts=True)
    picked = []
    # Shuffled in the order `stratified_split` shuffles, so the two agree.
    for class_id, share in zip(class_ids, _largest_remainder(counts, size)):
        members = np.flatnonzero(labels == class_id)
        rng.shuffle(members)
        picked.append(members[:share])
    return np.sort(np.concatenate(picked)).astype(np.int64)
