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
    held_out = _pick_per_class(
        labels, seed, lambda counts: [min(int(round(fraction * n)), n - 1) for n in counts])
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
    # The same shuffle as `stratified_split`'s, so the two agree where the shares do.
    return _pick_per_class(labels, seed, lambda counts: _largest_remainder(counts, size))


def _pick_per_class(labels, seed, shares):
    """The first `shares(counts)[c]` members of each class `c`, shuffled by `seed`.

    Args:
        labels: 1-D integer array of class ids.
        seed: seed of the shuffle, applied class by class in class-id order.
        shares: class sizes (in class-id order) -> how many to pick of each.

    Returns:
        A sorted int64 array of the picked indices.
    """
    rng = np.random.default_rng(seed)
    class_ids, counts = np.unique(labels, return_counts=True)
    picked = []
    for class_id, share in zip(class_ids, shares([int(n) for n in counts])):
        members = np.flatnonzero(labels == class_id)
        rng.shuffle(members)
        picked.append(members[:share])
    return np.sort(np.concatenate(picked)).astype(np.int64)
