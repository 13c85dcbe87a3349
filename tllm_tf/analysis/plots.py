"""PNG plots of the per-class report: accuracy change per class, mask over epochs.

Figures are drawn on matplotlib's Agg canvas directly, without pyplot, so
plotting neither needs a display nor changes the backend of a notebook or
program that imports this module.
"""

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from tllm_tf import atomic
from tllm_tf.analysis.report_figures import holding_reference_weights
from tllm_tf.analysis.report_figures import split_name

# Above this many classes, class names no longer fit under the bars.
MAX_NAMED_CLASSES = 40
UNDISTILLABLE_COLOR = "#d62728"
OTHER_COLOR = "#4c72b0"
DISTILLED_COLOR = "#f2f2f2"
WARMUP_COLOR = "#dddddd"
DISPLAY_NAMES = {"reference": "label-only reference", "student_kd": "KD student",
                 "student_tllm": "TLLM student", "student_tllm_refit": "TLLM refit student",
                 "teacher": "teacher"}


def display_name(model):
    """A model's name in plot titles: `"student_kd"` -> `"KD student"`."""
    return DISPLAY_NAMES.get(model, model)


def _save(figure, path):
    FigureCanvasAgg(figure)
    with atomic.atomic_open(path, "wb") as stream:
        figure.savefig(stream, dpi=120, format="png")


def plot_per_class_change(results, path, undistillable=(), source=None):
    """Bars of each model's per-class test accuracy minus the baseline's.

    One panel per compared model (KD, TLLM, ...), classes sorted from the
    largest loss to the largest gain, undistillable classes in red. A class
    with no test example has no change and is left out of its panel.

    Args:
        results: a results dict of `reporting`.
        path: the PNG to write.
        undistillable: names of the classes to draw in red. Defaults to `()`.
        source: where they come from (`report_figures.undistillable_classes`), for
            the legend; `None` leaves them out of it. Defaults to `None`.

    Returns:
        `True` if written; `False` with fewer than two models.
    """
    models, per_class = results["models"], results["per_class"]
    if len(models) < 2:
        return False
    class_names = np.array(results["class_names"])
    undistillable = set(undistillable)
    baseline = models[0]
    compared = models[1:]
    replaced = holding_reference_weights(results)
    named = len(class_names) <= MAX_NAMED_CLASSES
    width = max(7.0, 0.35 * len(class_names) + 2) if named else 10.0
    figure = Figure(figsize=(min(width, 16.0), 2.0 + 2.6 * len(compared)))
    axes = figure.subplots(len(compared), 1, sharey=True, squeeze=False)[:, 0]
    for ax, model in zip(axes, compared):
        change = 100 * (per_class[model] - per_class[baseline])
        known = np.flatnonzero(~np.isnan(change))
        order = known[np.argsort(change[known], kind="stable")]
        is_undistillable = np.array([class_names[i] in undistillable for i in order], dtype=bool)
        colors = np.where(is_undistillable, UNDISTILLABLE_COLOR, OTHER_COLOR)
        positions = np.arange(len(order))
        ax.bar(positions, change[order], color=colors, width=0.8 if named else 1.0, linewidth=0)
        if named:
            # A dot per class, so that classes with no change still show.
            ax.scatter(positions, change[order], color=colors, s=14, zorder=3)
        ax.axhline(0.0, color="black", linewidth=0.8)
        overall = 100 * (results["accuracy"][model] - results["accuracy"][baseline])
        worse = int(np.sum(change[order] < 0))
        holding = [display_name(name) for name in (model, baseline) if name in replaced]
        ax.set_title(f"{display_name(model)} minus {display_name(baseline)}: overall "
                     f"{overall:+.2f} points, {worse} {'class' if worse == 1 else 'classes'} "
                     "worse" + (f" ({' and '.join(holding)} holding the reference's weights)"
                                if holding else ""), fontsize=10)
        ax.set_ylabel("accuracy change\n(percentage points)")
        ax.grid(axis="y", alpha=0.3)
        if named:
            ax.set_xticks(positions, class_names[order],
                          rotation=90 if len(class_names) * max(map(len, class_names)) > 60 else 0)
            for label, marked in zip(ax.get_xticklabels(), is_undistillable):
                if marked:
                    label.set_color(UNDISTILLABLE_COLOR)
                    label.set_fontweight("bold")
        else:
            ax.set_xticks([])
        ax.set_xlabel(f"class, sorted by change ({len(order)} classes)")
    legend = [Patch(color=OTHER_COLOR, label="other classes")]
    if source:
        legend.insert(0, Patch(color=UNDISTILLABLE_COLOR,
                               label=f"undistillable ({_describe(source)})"))
    figure.suptitle(f"Per-class {split_name(results)} accuracy change after distillation",
                    y=0.995)
    top = 1.0 - 0.4 / figure.get_figheight()
    figure.legend(handles=legend, loc="upper center", ncols=len(legend), fontsize=8,
                  frameon=False, bbox_to_anchor=(0.5, top))
    figure.tight_layout(rect=(0, 0, 1, top))
    _save(figure, path)
    return True


def _describe(source):
    return "masked by TLLM at the end" if source == "tllm_mask" else source


def plot_mask_history(results, path):
    """The number of masked (undistillable) classes after each mask update.

    With at most `MAX_NAMED_CLASSES` classes, a second panel shows which
    classes were masked at each update.

    Args:
        results: a results dict of `reporting` with a `mask_history`.
        path: the PNG to write.

    Returns:
        `True` if written; `False` without a mask history.
    """
    history = results["mask_history"]
    if not history:
        return False
    class_names = list(results["class_names"])
    epochs = np.array([record["epoch"] for record in history])
    masked = np.stack([record["class_mask"] <= 0 for record in history], axis=1)
    named = len(class_names) <= MAX_NAMED_CLASSES
    heights = [1.0, 0.09 * len(class_names) + 0.5] if named else [1.0]
    figure = Figure(figsize=(8.5, 1.4 + 2.6 * sum(heights)))
    axes = figure.subplots(len(heights), 1, sharex=True, squeeze=False,
                           gridspec_kw={"height_ratios": heights})[:, 0]
    step = epochs[-1] - epochs[-2] if len(epochs) > 1 else 1
    edges = np.append(epochs, epochs[-1] + step)
    counts = masked.sum(axis=0)
    for ax in axes:
        # Before the first update every class is distilled.
        ax.axvspan(0, epochs[0], color=WARMUP_COLOR, linewidth=0)
        ax.set_xlim(0, edges[-1])
    axes[0].step(edges, np.append(counts, counts[-1]), where="post",
                 color=UNDISTILLABLE_COLOR, linewidth=2)
    axes[0].plot(epochs, counts, "o", color=UNDISTILLABLE_COLOR, markersize=3)
    axes[0].set_ylim(-0.5, len(class_names) + 0.5)
    axes[0].set_ylabel("masked classes")
    axes[0].grid(alpha=0.3)
    axes[0].set_title(f"TLLM mask over training: {counts[-1]} of {len(class_names)} "
                      f"classes masked after epoch {epochs[-1]}", fontsize=10)
    legend = [Patch(color=WARMUP_COLOR, label="before the first update:\nall classes distilled")]
    if named:
        axes[1].pcolormesh(edges, np.arange(len(class_names) + 1) - 0.5, masked,
                           cmap=ListedColormap([DISTILLED_COLOR, UNDISTILLABLE_COLOR]),
                           vmin=0, vmax=1, shading="flat")
        axes[1].set_yticks(np.arange(len(class_names)), class_names)
        axes[1].invert_yaxis()
        axes[1].set_ylabel("class")
        legend = [Patch(color=UNDISTILLABLE_COLOR, label="masked (not distilled)"),
                  Patch(facecolor=DISTILLED_COLOR, edgecolor="grey", label="distilled")] + legend
    axes[0].legend(handles=legend, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))  # Epochs, not 12.5.
    axes[-1].set_xlabel("epoch (a mask set at the end of an epoch applies to the next ones)")
    figure.tight_layout()
    _save(figure, path)
    return True
