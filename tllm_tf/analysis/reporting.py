"""The per-class report: which classes distillation hurts, and what TLLM masked.

TLLM (Zhu et al., NeurIPS 2022) calls a class *undistillable* when a student
distilled from the teacher does worse on it than the same student trained on
labels alone, and stops distilling it. This module gathers, per class, the
test accuracy of the label-only reference and of the KD and TLLM students
(and the TLLM refit, trained with TLLM's final mask), the classes TLLM masked
and its mask over the epochs, from a
`tools/train.py` workdir (or from `evaluation.evaluate_models`), and writes
them as markdown, JSON and PNG plots (`plots.py`).

The results dict (its keys: `workdir_results`, which reads it from a
workdir) is what every function here takes. The figures drawn from it
(`below_baseline`, `gain_by_mask`, `detection_limit`, ...) come from
`report_figures`; this module renders them.

It imports no TensorFlow (tools/report.py reads a workdir without it), and
matplotlib only to write the plots.
"""

import functools
import json
import os

import numpy as np

from tllm_tf import atomic
from tllm_tf.analysis import report_figures
from tllm_tf.analysis.report_figures import (below_baseline, class_names_where,
                                             detection_limit, evaluated_split, gain_by_mask,
                                             holding_reference_weights, split_name,
                                             undistillable_classes)
from tllm_tf.analysis.workdir_results import COLUMNS
from tllm_tf.pipeline import workdir_files

REPORT_FILES = ("report.md", "report.json", "per_class_change.png", "mask_history.png")
# Read as reporting.class_share by study_summary.py, from before the figures had their module.
class_share = report_figures.class_share


def detection_limit_lines(limit):
    """`detection_limit` as a markdown section (a heading, a sentence, a table)."""
    lines = [f"## What the rule could see at its last look (epoch {limit['epoch']})", "",
             "Per class on the held-out split: the images, those only one of the TLLM student "
             "and the reference got right, the student minus the reference, and the smallest "
             "harm the rule's test finds with that many discordant images (points; "
             f"{limit['significance_per_look']:.3g} a look, {limit['correction']} correction: "
             f"p <= {limit['level']:.3g} for one class). "
             "A harm below it is not told from noise; a larger held-out split lowers it.", "",
             "| class | held-out images | discordant | student minus reference | "
             "smallest harm found |", "|---|---|---|---|---|"]
    for row in limit["classes"]:
        gap, harm = row["student_minus_reference"], row["smallest_harm"]
        if not row["held_out_images"]:
            found = "n/a"
        else:
            found = "none" if harm is None else f"{100 * harm:.1f}"
        lines.append(f"| {row['name']} | {row['held_out_images']} | {row['discordant']} | "
                     f"{'n/a' if gap is None else f'{100 * gap:+.1f}'} | {found} |")
    return lines + [""]


def _percent(value):
    return "n/a" if np.isnan(value) else f"{100 * value:.1f}"


def _flag_columns(results):
    """(header, boolean array) of each mark column of the table."""
    per_class, models = results["per_class"], results["models"]
    columns = []
    reference, kd = COLUMNS[:2]
    if reference in models and kd in models:
        columns.append(("KD<ref", per_class[kd] < per_class[reference]))
    elif len(models) >= 2:
        columns.append((f"{models[1]}<{models[0]}", per_class[models[1]] < per_class[models[0]]))
    if results["final_mask"] is not None:
        columns.append(("masked", results["final_mask"] <= 0))
    return columns


def markdown_text(text):
    """`text` (a class name, say a folder's) with its `|` escaped, which would end a table cell.

    Only the cell mark: the table is also printed as it is on the terminal, where
    an escaped `_` or `*` would read worse than markdown's emphasis renders.
    """
    return text.replace("|", "\\|")


def markdown_table(results):
    """Per-class accuracy (%) table, with the undistillable marks.

    The accuracies are on the test split, or on the results' `split`.

    With a workdir, `KD<ref` marks a class the KD student got wrong more
    often than the label-only reference on the test split, and `masked` a
    class TLLM had stopped distilling at the end of training (chosen on the
    held-out split). Models other than a workdir's get a `second<first`
    column instead of `KD<ref`.
    """
    per_class, models = results["per_class"], results["models"]
    marks = _flag_columns(results)
    header = ["class"] + models + [title for title, _ in marks]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for index, name in enumerate(results["class_names"] or []):
        cells = [markdown_text(name)] + [_percent(per_class[m][index]) for m in models]
        cells += ["x" if flags[index] else "" for _, flags in marks]
        rows.append("| " + " | ".join(cells) + " |")
    overall = ["**overall**"] + [_percent(results["accuracy"][m]) for m in models]
    rows.append("| " + " | ".join(overall + [""] * len(marks)) + " |")
    return "\n".join(rows)


def _check_line(title, check, names, baseline):
    """One held-out check of the summary: both accuracies, the verdict, what was kept.

    The verdict is worded as the stage's log words it
    (`held_out_check.HeldOutCheck.verdict`, which this module cannot import: it
    loads TensorFlow): `"not behind it (p = 0.41 >= 0.2): kept"`. An older
    record without `significance` gives the p-value alone. The line of a
    student that took the baseline's weights ends with its own test accuracy
    and the file that keeps its own model, when the record has them.

    Args:
        title: what was judged: `"TLLM refit"`, a student's stage.
        check: its `refit_check.json` or `reference_check.json` record.
        names: `(candidate, baseline)`, the names in the record's keys and `kept`.
        baseline: the baseline in words, e.g. `"the reference"`.

    Returns:
        The line.
    """
    candidate_name, baseline_name = names
    replaced = check["kept"] == baseline_name
    test = f"p = {check['p_value']:.3g}"
    if check.get("significance") is not None:
        test += f" {'<' if replaced else '>='} {check['significance']:g}"
    line = (f"{title} on the held-out split: {100 * check[f'{candidate_name}_accuracy']:.2f}% "
            f"against {baseline}'s {100 * check[f'{baseline_name}_accuracy']:.2f}%, ")
    if not replaced:
        return line + f"not behind it ({test}): kept"
    line += f"behind it ({test}): took {baseline}'s weights"
    if "own_test_accuracy" in check:
        line += (f" (its own test accuracy was {100 * check['own_test_accuracy']:.2f}%, "
                 f"kept in {check['own_model_file']})")
    return line


def summary_lines(results):
    """One line per stage with its overall accuracy (on `split_name`), then the masked classes."""
    width = max([13] + [len(name) for name in results["accuracy"]])
    lines = [f"{name:>{width}}: {split_name(results)} accuracy {100 * value:.2f}%"
             for name, value in results["accuracy"].items()]
    names, source = undistillable_classes(results)
    shown = ", ".join(map(str, names)) or "none"
    if source == "tllm_mask":
        lines.append(f"TLLM undistillable classes at the end: {shown}")
    elif source:
        lines.append(f"Undistillable classes ({source}): {shown}")
    if results.get("mask_in_progress"):
        last = results["mask_history"][-1]
        lines.append(f"TLLM student not finished (no {workdir_files.PER_CLASS_FILE} yet): "
                     f"undistillable classes so far, after epoch {last['epoch']}: "
                     f"{class_names_where(results, last['class_mask'] <= 0) or 'none'}")
    if results.get("unfinished"):
        lines.append(f"Not finished (no {workdir_files.PER_CLASS_FILE} yet), so not in the "
                     f"table: {', '.join(results['unfinished'])}; the same tools/train.py "
                     "command resumes them")
    if results.get("refit_check"):
        lines.append(_check_line("TLLM refit", results["refit_check"], ("refit", "tllm"),
                                 "the tllm student"))
    for stage, check in results.get("reference_checks", {}).items():
        lines.append(_check_line(stage, check, ("student", "reference"), "the reference"))
    replaced = holding_reference_weights(results)
    if replaced:
        lines.append("Holding the label-only reference's weights (the fallback), so that their "
                     f"test accuracies above are the reference's: {', '.join(replaced)}")
    num_classes = len(results["class_names"])
    for stage, gain in gain_by_mask(results).items():
        masked = gain["num_masked"]
        holding = [name for name in (stage, workdir_files.student_stage("distilled"))
                   if name in replaced]
        lines.append(
            f"{stage} minus KD: {100 * (gain['masked'] + gain['not_masked']):+.2f} points, "
            f"{100 * gain['masked']:+.2f} from the {masked} masked "
            f"class{'' if masked == 1 else 'es'} and {100 * gain['not_masked']:+.2f} from the "
            f"other {num_classes - masked}"
            + (f" ({' and '.join(holding)} holding the reference's weights)" if holding else ""))
    return lines


def mask_changes(results):
    """The mask history with class names and what changed at each update.

    Returns:
        One dict per update: `epoch`, `num_undistillable_classes`,
        `undistillable_classes` (names), `added` and `removed` (names, since
        the previous update).
    """
    changes, previous = [], set()
    for record in results["mask_history"]:
        masked = class_names_where(results, record["class_mask"] <= 0)
        changes.append({
            "epoch": record["epoch"],
            "num_undistillable_classes": len(masked),
            "undistillable_classes": masked,
            "added": [n for n in masked if n not in previous],
            "removed": [n for n in results["class_names"] if n in previous and n not in masked],
        })
        previous = set(masked)
    return changes


def to_json(results):
    """The report as a JSON-ready dict; NaN becomes `null`, accuracies are 0-1."""
    models, per_class = results["models"], results["per_class"]
    names, source = undistillable_classes(results)
    return {
        "class_names": list(results["class_names"]),
        "models": list(models),
        "baseline": models[0] if models else None,
        "split": evaluated_split(results),
        "accuracy": {k: float(v) for k, v in results["accuracy"].items()},
        "per_class_accuracy": {k: atomic.json_floats(v) for k, v in per_class.items()},
        "per_class_change": {m: atomic.json_floats(per_class[m] - per_class[models[0]])
                             for m in models[1:]},
        "num_samples": results["num_samples"],
        "undistillable_classes": {"names": names, "count": len(names), "source": source},
        "below_baseline": below_baseline(results),
        "mask_history": mask_changes(results),
        "mask_in_progress": bool(results.get("mask_in_progress")),
        "unfinished": list(results.get("unfinished", [])),
        "refit_check": results.get("refit_check"),
        "reference_checks": results.get("reference_checks", {}),
        "gain_by_mask": gain_by_mask(results),
        "detection_limit": detection_limit(results),
    }


def markdown_report(results, title="TLLM per-class report", images=()):
    """The whole report as markdown: plots, summary, classes, table, mask history."""
    names, source = undistillable_classes(results)
    lines = [f"# {title}", ""]
    lines += [f"![{os.path.splitext(image)[0]}]({image})" for image in images]
    split = split_name(results)
    lines += ["", f"## {split[:1].upper()}{split[1:]} accuracy", "", "```",
              *summary_lines(results), "```", ""]
    if source:
        lines += [f"## Undistillable classes: {len(names)} of {len(results['class_names'])}", "",
                  f"{markdown_text(', '.join(names)) or 'none'} (source: {source})", ""]
    lines += [f"## Per-class {split} accuracy (%)", "", markdown_table(results), ""]
    changes = [c for c in mask_changes(results) if c["added"] or c["removed"]]
    if changes:
        lines += ["## Mask history (updates that changed the mask)", "",
                  "| epoch | masked | added | removed |", "|---|---|---|---|"]
        lines += [f"| {c['epoch']} | {c['num_undistillable_classes']} | "
                  f"{markdown_text(', '.join(c['added']))} | "
                  f"{markdown_text(', '.join(c['removed']))} |" for c in changes]
        lines.append("")
    limit = detection_limit(results)
    if limit:
        lines += detection_limit_lines(limit)
    return "\n".join(lines)


def write_report(results, output_dir, title="TLLM per-class report"):
    """Writes report.md, report.json and the PNG plots into `output_dir`.

    A plot with nothing to show (one model only; no mask history) is not
    written, and report.md does not link it.

    Returns:
        A dict file name -> path of the files written.
    """
    from tllm_tf.analysis import plots  # Imported here: only the report needs matplotlib.

    os.makedirs(output_dir, exist_ok=True)
    written = {}
    undistillable, source = undistillable_classes(results)
    for name, draw in (
            ("per_class_change.png", functools.partial(
                plots.plot_per_class_change, undistillable=undistillable, source=source)),
            ("mask_history.png", plots.plot_mask_history)):
        path = os.path.join(output_dir, name)
        if draw(results, path):
            written[name] = path
        elif os.path.exists(path):
            os.remove(path)  # A plot of an earlier report in the same place.
    for name, text in (("report.md", markdown_report(results, title, list(written))),
                       ("report.json", json.dumps(to_json(results), indent=1))):
        written[name] = os.path.join(output_dir, name)
        with atomic.atomic_open(written[name]) as handle:
            handle.write(text + "\n")
    return written
