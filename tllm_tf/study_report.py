"""The accuracy study's summary: means over seeds, markdown tables, two figures.

Turns the per-seed records of `tllm_tf.study.run_seed` into means and sample
standard deviations, the markdown tables of `results/study.md`, and two
figures drawn with matplotlib's Agg backend:

* per-class test accuracy of the KD student minus the label-only student,
  sorted: the classes below zero are the undistillable ones (Zhu et al.,
  NeurIPS 2022);
* the number of undistillable classes against the teacher's size: the
  paper's capacity-gap finding.
"""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _mean_std(values):
    values = np.asarray(values, dtype=np.float64)
    return {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1
            else 0.0, "n": int(len(values))}


def summarise(records, setting):
    """Means and sample standard deviations over seeds.

    Returns:
        A dict: `labels`, `kd` (teacher ->), `kd_minus_labels` (teacher ->),
        `undistillable` (teacher ->), `teachers` (teacher -> accuracy and
        num_params), `tllm` and `tllm_minus_kd` (variant ->), `tllm_wins`
        (variant -> seeds where TLLM beat KD), `kd_minus_labels_per_class`
        (main teacher, mean over seeds per class).
    """
    main = setting.teacher_model
    accuracy = lambda results: [r["accuracy"] for r in results]  # noqa: E731
    summary = {"labels": _mean_std(accuracy([r["labels"] for r in records]))}
    teacher_names = list(records[0]["kd"])
    summary["teachers"] = {
        name: dict(_mean_std(accuracy([r["teachers"][name] for r in records])),
                   num_params=records[0]["teachers"][name]["num_params"])
        for name in teacher_names}
    summary["kd"] = {name: _mean_std(accuracy([r["kd"][name] for r in records]))
                     for name in teacher_names}
    summary["kd_minus_labels"] = {
        name: _mean_std([r["kd"][name]["accuracy"] - r["labels"]["accuracy"] for r in records])
        for name in teacher_names}
    summary["undistillable"] = {
        name: _mean_std([r["undistillable"][name] for r in records]) for name in teacher_names}
    summary["tllm"], summary["tllm_minus_kd"], summary["tllm_wins"] = {}, {}, {}
    for name in records[0]["tllm"]:
        differences = [r["tllm"][name]["accuracy"] - r["kd"][main]["accuracy"] for r in records]
        summary["tllm"][name] = dict(
            _mean_std(accuracy([r["tllm"][name] for r in records])),
            final_masked=_mean_std([sum(m <= 0 for m in r["tllm"][name]["final_mask"])
                                    for r in records]),
            masked_per_epoch=_mean_std([np.mean(r["tllm"][name]["masked_per_epoch"])
                                        for r in records]),
            undistillable=_mean_std([r["tllm"][name]["undistillable"] for r in records]))
        summary["tllm_minus_kd"][name] = _mean_std(differences)
        summary["tllm_wins"][name] = int(sum(d > 0 for d in differences))
    per_class = np.array([np.subtract(r["kd"][main]["per_class"], r["labels"]["per_class"])
                          for r in records])
    summary["kd_minus_labels_per_class"] = {
        "mean": per_class.mean(axis=0).tolist(), "std": per_class.std(axis=0, ddof=1).tolist()
        if len(records) > 1 else [0.0] * per_class.shape[1]}
    return summary


def _pm(stats, scale=100.0, digits=2):
    return f"{stats['mean'] * scale:.{digits}f} ± {stats['std'] * scale:.{digits}f}"


def markdown(summary, setting, seeds):
    """The study's tables, as markdown text."""
    main = setting.teacher_model
    lines = [
        f"Setting: `{setting}`; seeds {list(seeds)}; mean ± sample std over seeds; "
        "accuracies in % on the test split.", "",
        "## Labels vs KD vs TLLM", "",
        f"| student | test accuracy | minus KD |", "|---|---|---|",
        f"| labels only | {_pm(summary['labels'])} | |",
        f"| KD ({main}) | {_pm(summary['kd'][main])} | |",
    ]
    for name, stats in summary["tllm"].items():
        lines.append(f"| TLLM `{name}` | {_pm(stats)} | "
                     f"{_pm(summary['tllm_minus_kd'][name])} "
                     f"({summary['tllm_wins'][name]}/{len(seeds)} seeds better) |")
    lines += ["", "## Undistillable classes vs teacher size", "",
              "| teacher | parameters | teacher accuracy | KD student | KD minus labels "
              "| undistillable classes |", "|---|---|---|---|---|---|"]
    for name, stats in summary["teachers"].items():
        lines.append(
            f"| {name} | {stats['num_params']:,} | {_pm(stats)} | {_pm(summary['kd'][name])} | "
            f"{_pm(summary['kd_minus_labels'][name])} | "
            f"{_pm(summary['undistillable'][name], scale=1, digits=1)} |")
    lines += ["", "## What each TLLM variant masked", "",
              "Masked classes: the mean over epochs of the number of classes whose "
              "distillation was off, and the number at the end. Test classes below labels: "
              f"classes where the student is less accurate than the label-only one "
              f"(KD: {_pm(summary['undistillable'][main], scale=1, digits=1)}).", "",
              "| variant | masked, mean over epochs | masked at the end "
              "| test classes below labels |", "|---|---|---|---|"]
    for name, stats in summary["tllm"].items():
        lines.append(f"| `{name}` | {_pm(stats['masked_per_epoch'], scale=1, digits=2)} | "
                     f"{_pm(stats['final_masked'], scale=1, digits=1)} | "
                     f"{_pm(stats['undistillable'], scale=1, digits=1)} |")
    return "\n".join(lines) + "\n"


def plot_per_class_difference(summary, class_names, path, title):
    """Bar chart of the per-class KD minus labels-only accuracy, sorted."""
    mean = 100 * np.asarray(summary["kd_minus_labels_per_class"]["mean"])
    std = 100 * np.asarray(summary["kd_minus_labels_per_class"]["std"])
    order = np.argsort(mean)
    figure, axes = plt.subplots(figsize=(6, 3.2))
    colors = ["tab:red" if value < 0 else "tab:blue" for value in mean[order]]
    axes.bar(range(len(order)), mean[order], yerr=std[order], color=colors, capsize=3)
    axes.axhline(0, color="black", linewidth=0.8)
    axes.set_xticks(range(len(order)), [class_names[i] for i in order])
    axes.set_xlabel("class (sorted)")
    axes.set_ylabel("KD − labels, test acc. (points)")
    axes.set_title(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_capacity_gap(summary, path, title):
    """Undistillable-class count (and KD minus labels) against teacher size."""
    names = list(summary["teachers"])
    sizes = [summary["teachers"][name]["num_params"] for name in names]
    count = [summary["undistillable"][name]["mean"] for name in names]
    count_std = [summary["undistillable"][name]["std"] for name in names]
    gain = [100 * summary["kd_minus_labels"][name]["mean"] for name in names]
    gain_std = [100 * summary["kd_minus_labels"][name]["std"] for name in names]
    figure, left = plt.subplots(figsize=(6, 3.2))
    left.errorbar(sizes, count, yerr=count_std, marker="o", color="tab:red", capsize=3)
    left.set_xscale("log")
    left.set_xlabel("teacher parameters")
    left.set_ylabel("undistillable classes", color="tab:red")
    for size, count_value, name in zip(sizes, count, names):
        left.annotate(name, (size, count_value), textcoords="offset points",
                      xytext=(4, 4), fontsize=7)
    right = left.twinx()
    right.errorbar(sizes, gain, yerr=gain_std, marker="s", color="tab:blue", capsize=3,
                   linestyle="--")
    right.axhline(0, color="tab:blue", linewidth=0.6, linestyle=":")
    right.set_ylabel("KD − labels, test acc. (points)", color="tab:blue")
    left.set_title(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
