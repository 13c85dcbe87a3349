"""The forty-seed tables' intervals again, with Student's t (this folder's study.json).

study.json and study.md here were written when `study_stats` used 1.96 for more than 30
degrees of freedom (fixed on 2026-12-06, f151454): their 95% intervals over 40 seeds are 3.1%
too narrow (t(0.975, 39) = 2.023). The per-seed results are not kept, so the tables are not
regenerated; this reads each stored summary's mean, std and seeds, recomputes its interval
with `study_stats.t_quantile_975`, and lists the summaries whose verdict (the interval above
0, below 0, or containing it) changes. Run from the repository's root (seconds):

    .venv/bin/python results/study_fashion/refit_safeguard/forty_seeds/t_intervals.py
"""

import json
import math
import os

from tllm_tf.analysis import study_stats

STUDY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "study.json")


def _summaries(node, path=""):
    """`(path, summary)` of every paired summary below `node`."""
    if isinstance(node, dict):
        if {"mean", "std", "ci_low", "ci_high", "seeds"} <= set(node):
            yield path, node
            return
        for key, value in node.items():
            yield from _summaries(value, f"{path}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _summaries(value, f"{path}[{index}]")


def _per_class(summaries):
    """`(path, summary, class index or None)`: a per-class summary (lists) split by class."""
    for path, summary in summaries:
        if not isinstance(summary["mean"], list):
            yield path, summary, None
            continue
        for index in range(len(summary["mean"])):
            yield path, {key: value[index] if isinstance(value, list) else value
                         for key, value in summary.items()}, index


def _verdict(low, high):
    return "above 0" if low > 0 else "below 0" if high < 0 else "contains 0"


def _named(path, class_index, settings):
    """The summary's setting, path and, for a per-class summary, class."""
    index = int(path[len("/settings["):path.index("]")])
    setting = settings[index]
    name = path[path.index("]") + 1:].lstrip("/")
    if class_index is not None:
        name += f" {setting['class_names'][class_index]}"
    return f"{setting['student']} / {setting['teacher']}: {name}"


def main():
    with open(STUDY) as handle:
        settings = json.load(handle)["settings"]
    checked = changed = 0
    for path, summary, class_index in _per_class(_summaries({"settings": settings})):
        seeds = int(summary["seeds"])
        if seeds <= 31 or summary["std"] is None or not math.isfinite(summary["std"]):
            continue
        checked += 1
        half = study_stats.t_quantile_975(seeds - 1) * summary["std"] / math.sqrt(seeds)
        low, high = summary["mean"] - half, summary["mean"] + half
        before = _verdict(summary["ci_low"], summary["ci_high"])
        if _verdict(low, high) != before:
            changed += 1
            print(f"{_named(path, class_index, settings)}: {100 * summary['mean']:+.2f} "
                  f"[{100 * summary['ci_low']:+.2f}, {100 * summary['ci_high']:+.2f}] as stored "
                  f"({before}); with t [{100 * low:+.2f}, {100 * high:+.2f}] "
                  f"({_verdict(low, high)})")
    print(f"{checked} summaries of more than 31 seeds; {changed} change verdict with t.")


if __name__ == "__main__":
    main()
