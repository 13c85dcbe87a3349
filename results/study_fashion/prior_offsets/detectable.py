"""What the paired rule could see of KD's per-class harm on the held-out split (docs/study.md).

For every seed and setting of a study run with the default (`--prior_offsets`),
this script judges the stored KD student against the stored label-only
reference on the held-out split, as the rule judges at a look (per image, with
offsets fitted on those images: `prior_offsets.per_image_correctness`; the
paired exact test at the default's level for one look, 0.05 over ten looks, with
Holm's correction over the classes: `identification`), and on
the test split as reported. It prints, for each class KD hurts beyond noise on the test
split over the seeds:
- KD minus labels on held-out and test (points, mean over seeds);
- the discordant images a class on held-out (`b + w`, mean);
- the seeds in which the test would find the class behind on held-out;
- the smallest harm that test finds (points): `identification.smallest_detectable_gap`
  at the class's mean discordant count and the level one class alone must
  reach (Holm's first threshold), and with 3 and 10 times the held-out images.

    .venv/bin/python results/study_fashion/prior_offsets/detectable.py \
        --results=runs/ro20/results.jsonl --out=runs/detectable.jsonl \
        runs/ro_a runs/ro_b runs/rof_a runs/rof_b > detectable.md

With `--out`, each seed's counts are written as they come, a second call reads
them back instead of judging again, and the table comes from them.
"""

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import apply  # noqa: E402  (the study scripts' shared loading)

from tllm_tf import identification  # noqa: E402
from tllm_tf import prior_offsets  # noqa: E402
from tllm_tf.analysis import study_stats  # noqa: E402
from tllm_tf.pipeline import build  # noqa: E402

# The default rule's level at one look: 0.05 spent over its ten looks (a sticky mask), then
# Holm over the ten classes, whose first threshold is what one class alone must reach.
LOOK_SIGNIFICANCE = 0.05 / 10
ONE_CLASS_LEVEL = LOOK_SIGNIFICANCE / 10


def judged(model, data, config, split):
    """Per-image correctness and labels of `model` on `split`.

    On held-out as the rule judges (offsets fitted on those images); on test as
    reported (the stored model, whose offsets were fitted on held-out).
    """
    judge = prior_offsets.per_image_correctness(model, data.num_classes,
                                                with_offsets=split == "held_out")
    return judge(build.eval_batches(getattr(data, split), config))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", required=True, help="results.jsonl of the stored runs")
    parser.add_argument("--out", help="where the per-seed rows go (JSON lines); resumes")
    parser.add_argument("roots", nargs="+", help="study roots holding the seed<s>/ folders")
    args = parser.parse_args()
    students = apply.StoredStudents(args.roots)
    rows = []
    done = set()
    if args.out and os.path.exists(args.out):
        rows = apply.read_records(args.out)
        done = {(r["seed"], r["student"], r["teacher"]) for r in rows}
    out = open(args.out, "a") if args.out else None
    records = apply.read_records(args.results)
    for record in records:
        key = (record["seed"], record["student"], record["teacher"])
        if record["arm"] != "kd" or key in done:
            continue
        row = dict(zip(("seed", "student", "teacher"), key))
        reference, data, config = students.load(record, arm="labels")
        student, _, _ = students.load(record)
        for split in ("held_out", "test"):
            kd_correct, labels = judged(student, data, config, split)
            labels_correct, _ = judged(reference, data, config, split)
            behind, ahead = identification.discordant_counts(
                kd_correct, labels_correct, labels, data.num_classes)
            row[split] = {"behind": behind.tolist(), "ahead": ahead.tolist(),
                          "images": np.bincount(labels, minlength=data.num_classes).tolist()}
        rows.append(row)
        if out:
            out.write(json.dumps(row) + "\n")
            out.flush()
        print(*key, "found behind:", np.flatnonzero(found_behind(row)).tolist(),
              file=sys.stderr, flush=True)
    report(rows, records[0]["class_names"])


def found_behind(row):
    """The classes the test finds behind on the row's held-out counts, at one look's level."""
    behind, ahead = (np.array(row["held_out"][k]) for k in ("behind", "ahead"))
    p_values = identification.binomial_upper_tail(behind, behind + ahead)
    return identification.reject(p_values, LOOK_SIGNIFICANCE, "holm")


def harm(split_counts):
    """KD minus labels per class, in points: (w - b) / images."""
    counts = {k: np.asarray(v, dtype=np.float64) for k, v in split_counts.items()}
    return 100.0 * (counts["ahead"] - counts["behind"]) / counts["images"]


def report(rows, class_names):
    by_setting = apply.by_setting(rows)
    print("| student, teacher | class | KD minus labels, test | held-out | discordant "
          "held-out images | seeds found behind | smallest harm found: x1 / x3 / x10 held-out |")
    print("|---|---|---|---|---|---|---|")
    for (student, teacher), runs in sorted(by_setting.items()):
        test = np.array([harm(r["test"]) for r in runs])
        held_out = np.array([harm(r["held_out"]) for r in runs])
        rejected = np.array([found_behind(r) for r in runs])
        discordant = np.array([np.add(r["held_out"]["behind"], r["held_out"]["ahead"])
                               for r in runs], dtype=np.float64)
        images = np.array([r["held_out"]["images"] for r in runs], dtype=np.float64)
        for c, name in enumerate(class_names):
            diff = study_stats.paired_difference(test[:, c], np.zeros(len(runs)))
            if diff["ci_high"] >= 0:
                continue  # Not hurt beyond noise on the test split.
            scales = np.array([1, 3, 10])
            gaps = identification.smallest_detectable_gap(
                np.rint(scales * discordant[:, c].mean()).astype(np.int64), ONE_CLASS_LEVEL)
            smallest = [f"{100.0 * gap / (scale * images[:, c].mean()):.1f}"
                        for gap, scale in zip(gaps, scales)]
            print(f"| `{student}`, `{teacher}` | {name} | {test[:, c].mean():+.2f} "
                  f"[{diff['ci_low']:+.2f}, {diff['ci_high']:+.2f}] | "
                  f"{held_out[:, c].mean():+.2f} | {discordant[:, c].mean():.0f} | "
                  f"{int(rejected[:, c].sum())}/{len(runs)} | {' / '.join(smallest)} |")


if __name__ == "__main__":
    main()
