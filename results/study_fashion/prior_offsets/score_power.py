"""Would a paired test on per-image probabilities see KD's per-class harm that counts miss?

`detectable.py` found that the default rule, an exact test on the images one
model gets right and the other wrong, cannot see a per-class harm below 4-7
points at 600 held-out images a class, where KD's harms with the MLP student are
0.6-2.0 points (docs/study.md, "What the rule can see"). A test on a
continuous per-image score uses every image, not only the discordant ones. This
script measures, without training, whether that finds the harmed classes more
often, and at what price in false alarms, on the stored KD and label-only
students of a study run with `--arms=kd` (`runs/score_a`, `runs/score_b`).

Per image of the held-out split, each model's score is the probability it gives
the true class; its logits are the stored model's (prior offsets included, fitted
on the held-out split as the stage fits them) and, for the `calibrated` scores,
divided by the one temperature that minimises that model's log-loss on the held-out
split (KD's students are softer than the label-only ones; a score that only
measured softness would flag every class). The tests, each one-sided per class,
then Holm's correction over the classes:
- `counts`: the rule's exact test on the discordant images (the baseline);
- `probability`: Student's t on the paired differences of the raw probabilities;
- `calibrated`: the same after each model's temperature;
- `calibrated_sign`: the sign test on which model gives the true class more
  calibrated probability.

Each at two levels: one look of the default (0.05 spent over ten looks) and a
single look at 0.05. A class counts as hurt when KD minus labels on the test
split, over every seed stored, has its paired 95% interval below 0 (as in
`detectable.py`); as not hurt otherwise. The table gives, per setting and score,
the share of seeds in which each hurt class is found, and the share of
(seed, class) pairs found behind among the classes not hurt (false alarms), for
the seeds that choose (0-9) and the fresh ones (10-19) apart.

    .venv/bin/python results/study_fashion/prior_offsets/score_power.py \
        --cache=runs/score_cache runs/score_a runs/score_b > score_power.md

Each seed's logits are written to `--cache` as they come; a second call reads
them back instead of loading the models again.
"""

import argparse
import collections
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import apply  # noqa: E402  (the study scripts' shared loading)

from tllm_tf import atomic  # noqa: E402
from tllm_tf import identification  # noqa: E402
from tllm_tf import prior_offsets  # noqa: E402
from tllm_tf import student_t  # noqa: E402
from tllm_tf.analysis import study_stats  # noqa: E402
from tllm_tf.pipeline import build  # noqa: E402

LEVELS = {"one of ten looks": 0.05 / 10, "one look": 0.05}
CHOOSE_SEEDS = range(0, 10)


def cached_logits(students, record, cache):
    """`{split: (kd_logits, labels_logits, labels)}` of a record's seed and setting."""
    path = os.path.join(cache, f"{record['student']}_{record['teacher']}_seed"
                               f"{record['seed']}.npz")
    if not os.path.exists(path):
        arrays = {}
        kd, data, config = students.load(record)
        reference, _, _ = students.load(record, arm="labels")
        for split in ("held_out", "test"):
            batches = build.eval_batches(getattr(data, split), config)
            arrays[f"kd_{split}"], arrays[f"y_{split}"] = prior_offsets.logits_and_labels(
                kd, batches)
            arrays[f"labels_{split}"], _ = prior_offsets.logits_and_labels(reference, batches)
        with atomic.atomic_path(path, suffix=".npz") as temporary:
            np.savez(temporary, **arrays)
    with np.load(path) as archive:
        return {split: (archive[f"kd_{split}"], archive[f"labels_{split}"],
                        archive[f"y_{split}"]) for split in ("held_out", "test")}


def log_softmax(logits):
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def fitted_temperature(logits, labels):
    """The temperature minimising the mean log-loss of `logits / T` (a grid, then a finer one)."""
    def loss(log_t):
        return -log_softmax(logits / np.exp(log_t))[np.arange(len(labels)), labels].mean()
    grid = np.linspace(-3.0, 3.0, 61)
    best = grid[np.argmin([loss(g) for g in grid])]
    fine = np.linspace(best - 0.1, best + 0.1, 41)
    return float(np.exp(fine[np.argmin([loss(g) for g in fine])]))


def true_class_probability(logits, labels, temperature=1.0):
    return np.exp(log_softmax(logits / temperature)[np.arange(len(labels)), labels])


def one_sided_t(differences):
    """p-value of "mean <= 0" against "mean > 0" by Student's t."""
    n = len(differences)
    std = differences.std(ddof=1)
    if n < 2 or std == 0:
        return 1.0
    return float(student_t.upper_p_value(differences.mean() / (std / np.sqrt(n)), n - 1))


def p_values(kd_logits, labels_logits, labels, num_classes):
    """Per score, the per-class p-values of "KD's student is no worse than labels'"."""
    kd_correct = kd_logits.argmax(axis=1) == labels
    labels_correct = labels_logits.argmax(axis=1) == labels
    behind, ahead = identification.discordant_counts(kd_correct, labels_correct, labels,
                                                     num_classes)
    raw = (true_class_probability(labels_logits, labels)
           - true_class_probability(kd_logits, labels))
    calibrated = (
        true_class_probability(labels_logits, labels, fitted_temperature(labels_logits, labels))
        - true_class_probability(kd_logits, labels, fitted_temperature(kd_logits, labels)))
    scores = {"counts": identification.binomial_upper_tail(behind, behind + ahead)}
    scores["probability"] = np.array([one_sided_t(raw[labels == c])
                                      for c in range(num_classes)])
    scores["calibrated"] = np.array([one_sided_t(calibrated[labels == c])
                                     for c in range(num_classes)])
    signs = [(np.sum(calibrated[labels == c] > 0), np.sum(calibrated[labels == c] != 0))
             for c in range(num_classes)]
    scores["calibrated_sign"] = identification.binomial_upper_tail(
        np.array([s[0] for s in signs]), np.array([s[1] for s in signs]))
    return scores


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", required=True, help="folder of the per-seed logits")
    parser.add_argument("roots", nargs="+", help="study roots with results.jsonl and seed<s>/")
    args = parser.parse_args()
    os.makedirs(args.cache, exist_ok=True)
    students = apply.StoredStudents(args.roots)
    records = [r for root in args.roots
               for r in apply.read_records(os.path.join(root, "results.jsonl"))
               if r["arm"] == "kd"]
    rows = collections.defaultdict(list)
    for record in sorted(records, key=lambda r: (r["student"], r["teacher"], r["seed"])):
        splits = cached_logits(students, record, args.cache)
        num_classes = splits["test"][0].shape[1]
        kd_test, labels_test, y_test = splits["test"]
        harm = [100.0 * (np.mean(kd_test[y_test == c].argmax(1) == c)
                         - np.mean(labels_test[y_test == c].argmax(1) == c))
                for c in range(num_classes)]
        rows[(record["student"], record["teacher"])].append(
            {"seed": record["seed"], "test_harm": np.array(harm),
             "p": p_values(*splits["held_out"], num_classes)})
        print(record["student"], record["teacher"], record["seed"], file=sys.stderr, flush=True)
    report(rows, records[0]["class_names"])


def report(rows, class_names):
    print("Share of seeds in which a class KD hurts is found behind on the held-out split "
          "(seeds 0-9 / 10-19), and false alarms: the share of (seed, class) pairs found "
          "behind among the classes KD does not hurt, then among those KD helps.\n")
    totals = collections.defaultdict(lambda: np.zeros(6))
    for level_name, level in LEVELS.items():
        print(f"\n### At {level} ({level_name}), Holm over the classes\n")
        scores = print_header(rows)
        for (student, teacher), runs in sorted(rows.items()):
            harm = np.array([r["test_harm"] for r in runs])
            choose = np.array([r["seed"] in CHOOSE_SEEDS for r in runs])
            found = {s: np.array([identification.reject(r["p"][s], level, "holm")
                                  for r in runs]) for s in scores}
            summaries = [study_stats.paired_difference(harm[:, c], np.zeros(len(runs)))
                         for c in range(len(class_names))]
            hurt = np.array([s["ci_high"] < 0 for s in summaries])
            helped = np.array([s["ci_low"] > 0 for s in summaries])
            for c in np.flatnonzero(hurt):
                cells = [f"{found[s][choose, c].mean():.0%} / {found[s][~choose, c].mean():.0%}"
                         for s in scores]
                print(f"| `{student}`, `{teacher}` | {class_names[c]} | "
                      f"{summaries[c]['mean']:+.2f} [{summaries[c]['ci_low']:+.2f}, "
                      f"{summaries[c]['ci_high']:+.2f}] | " + " | ".join(cells) + " |")
            cells = [f"{found[s][choose][:, ~hurt].mean():.1%} / "
                     f"{found[s][~choose][:, ~hurt].mean():.1%}"
                     + (f"; {found[s][:, helped].mean():.1%}" if helped.any() else "")
                     for s in scores]
            print(f"| `{student}`, `{teacher}` | false alarms ({int((~hurt).sum())} not hurt, "
                  f"{int(helped.sum())} helped) | | " + " | ".join(cells) + " |")
            for s in scores:
                key = (level_name, s)
                totals[key] += [found[s][choose][:, hurt].sum(), choose.sum() * hurt.sum(),
                                found[s][~choose][:, hurt].sum(), (~choose).sum() * hurt.sum(),
                                found[s][:, ~hurt].sum(), len(runs) * (~hurt).sum()]
        print("\nOver the settings (hurt classes found, seeds 0-9 / 10-19; false alarms, all "
              "seeds):\n")
        for s in scores:
            t = totals[(level_name, s)]
            print(f"- `{s}`: {t[0] / max(t[1], 1):.0%} / {t[2] / max(t[3], 1):.0%}; "
                  f"false alarms {t[4] / max(t[5], 1):.1%}")
    print_every_class(rows, class_names)
    print("\n" + json.dumps({"seeds": sorted({r["seed"] for runs in rows.values()
                                              for r in runs})}))


def print_header(rows):
    """Prints a per-class table's header, a column a score; returns the scores' names."""
    scores = list(rows[next(iter(rows))][0]["p"])
    print("| student, teacher | class | KD minus labels, test | "
          + " | ".join(f"`{s}`" for s in scores) + " |")
    print("|---|---|---|" + "---|" * len(scores))
    return scores


def print_every_class(rows, class_names):
    """Per class: KD minus labels on test, and how often each score finds it behind (all seeds)."""
    level = LEVELS["one of ten looks"]
    print(f"\n### Every class, all seeds, at {level}: KD minus labels on test (points), then "
          "the share of seeds each score finds it behind\n")
    scores = print_header(rows)
    for (student, teacher), runs in sorted(rows.items()):
        harm = np.array([r["test_harm"] for r in runs])
        for c, name in enumerate(class_names):
            summary = study_stats.paired_difference(harm[:, c], np.zeros(len(runs)))
            shares = [np.mean([identification.reject(r["p"][s], level, "holm")[c] for r in runs])
                      for s in scores]
            print(f"| `{student}`, `{teacher}` | {name} | {summary['mean']:+.2f} "
                  f"[{summary['ci_low']:+.2f}, {summary['ci_high']:+.2f}] | "
                  + " | ".join(f"{share:.0%}" for share in shares) + " |")


if __name__ == "__main__":
    main()
