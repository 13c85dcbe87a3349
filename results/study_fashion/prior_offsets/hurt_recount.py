"""The classes KD hurts, counted again with Holm's correction across the classes (docs/study.md).

The per-class tables (`fallback_per_class.py`, `reference_fallback/per_class_*_at_0.2.md`)
call a class hurt when KD's paired 95% CI against the label-only student lies below 0, each
class on its own: with ten classes, a table names some class about one time in five where KD
hurts none. This script asks which of those (setting, class) pairs survive Holm's correction
across the ten classes of their setting (the paired t-test, a family-wise 5%), and how many of
the survivors each student recovers. Nothing is trained or evaluated: the paired t-test needs
only the mean, the sample std and the number of seeds of KD minus labels per class, which every
stored `study.json` holds (`kd_minus_labels_per_class`); the classes chosen on seeds 0-29 or 0-39
pool the stored summaries of their seed groups exactly (`study_stats.pooled_difference`). What
each student did on a pair is read from the per-class tables themselves, and the script checks
that its reading gives the tables' own counts, and that the stored summaries name, uncorrected,
exactly the pairs the tables list.

    .venv/bin/python results/study_fashion/prior_offsets/hurt_recount.py \
        > results/study_fashion/prior_offsets/reference_fallback/hurt_recount.md
"""

import collections
import json
import os
import re

import numpy as np

from tllm_tf.analysis import study_stats

HERE = os.path.dirname(os.path.abspath(__file__))
STUDY = os.path.dirname(HERE)
TABLES = os.path.join(HERE, "reference_fallback")
TWENTY = "prior_offsets/rule_twenty_seeds"

# (recipe, per-class table at the fallback's default level, the studies whose seeds choose
# the hurt classes: their study.json, pooled).
RECIPES = (
    ("base, 600 held-out images a class, seeds 0-19", "per_class_base_at_0.2.md", (TWENTY,)),
    ("1,800 held-out images a class, seeds 0-19", "per_class_holdout_30_at_0.2.md",
     ("prior_offsets/holdout_30_twenty_seeds",)),
    ("T = 2, seeds 0-9", "per_class_t2_at_0.2.md", ("prior_offsets/t2_default",)),
    ("1,000 labels, seeds 0-9", "per_class_few_labels_at_0.2.md",
     ("prior_offsets/few_labels_default",)),
    ("every image, 0.1 held out, seeds 0-14", "per_class_all_images_holdout_10_at_0.2.md",
     ("prior_offsets/all_images_holdout_10",)),
    ("every image, 0.3 held out, seeds 0-14", "per_class_all_images_holdout_30_at_0.2.md",
     ("prior_offsets/all_images_holdout_30",)),
    ("a CNN teacher, seeds 0-9", "per_class_strong_teacher_at_0.2.md", ("strong_teacher",)),
)
FRESH = (
    ("base, seeds 20-29, chosen on 0-19", "per_class_seeds_20_29_at_0.2.md", (TWENTY,)),
    ("base, seeds 30-39, chosen on 0-29", "per_class_seeds_30_39_at_0.2.md",
     (TWENTY, "prior_offsets/rule_seeds_20_29")),
    ("base, seeds 40-49, chosen on 0-39", "per_class_seeds_40_49_at_0.2.md",
     (TWENTY, "prior_offsets/rule_seeds_20_29", "prior_offsets/rule_seeds_30_39")),
)
# The study of each fresh table's own seeds: what KD did there on the pairs chosen before.
MEASURED = {
    "per_class_seeds_20_29_at_0.2.md": "prior_offsets/rule_seeds_20_29",
    "per_class_seeds_30_39_at_0.2.md": "prior_offsets/rule_seeds_30_39",
    "per_class_seeds_40_49_at_0.2.md": "prior_offsets/rule_seeds_40_49",
}

_INTERVAL = re.compile(r"([+-]\d+\.\d+) \[([+-]\d+\.\d+), ([+-]\d+\.\d+)\]")
_RECOVERED = re.compile(r"the default (\d+) of (\d+), the default with the fallback (\d+) of")


def _interval(cell):
    mean, low, high = map(float, _INTERVAL.search(cell).groups())
    return mean, low, high


def read_table(name):
    """The pairs of a per-class table: `{(student, teacher, class): outcome}`.

    Each outcome: `mask` (the default alone above KD on the class beyond noise),
    `fallback` (the default with the fallback so), `back` (that, and not below
    labels beyond noise) and `harm` (KD minus labels on the class, points).
    """
    with open(os.path.join(TABLES, name)) as stream:
        text = stream.read()
    pairs = {}
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 10 or not cells[0].startswith("`"):
            continue
        student, teacher = (part.strip(" `") for part in cells[0].split(","))
        _, mask_low, _ = _interval(cells[7])
        _, fallback_low, _ = _interval(cells[8])
        _, _, labels_high = _interval(cells[9])
        pairs[(student, teacher, cells[2])] = {
            "mask": mask_low > 0, "fallback": fallback_low > 0,
            "back": fallback_low > 0 and labels_high >= 0, "below_labels": labels_high < 0,
            "harm": float(cells[4]) - float(cells[3])}
    counts = [tuple(map(int, match)) for match in _RECOVERED.findall(text)]
    mask, total, fallback = counts[0]
    back = counts[1][2]
    read = (sum(p["mask"] for p in pairs.values()), len(pairs),
            sum(p["fallback"] for p in pairs.values()), sum(p["back"] for p in pairs.values()))
    if read != (mask, total, fallback, back):
        raise ValueError(f"{name}: the rows read give {read}, the table says "
                         f"{(mask, total, fallback, back)}.")
    return pairs


def hurt_classes(studies):
    """`{(student, teacher): (uncorrected, after Holm)}`, sets of class names, seeds pooled."""
    parts = collections.defaultdict(list)
    names = {}
    for study in studies:
        with open(os.path.join(STUDY, study, "study.json")) as stream:
            for setting in json.load(stream)["settings"]:
                key = (setting["student"], setting["teacher"])
                parts[key].append(setting["kd_minus_labels_per_class"])
                names[key] = setting["class_names"]
    chosen = {}
    for key, summaries in parts.items():
        if len(summaries) != len(studies):
            continue
        pooled = study_stats.pooled_difference(summaries)
        chosen[key] = tuple(
            {names[key][c] for c in np.flatnonzero(study_stats.hurt_from_difference(pooled, rule))}
            for rule in ("none", "holm"))
    return chosen


def recount(table, studies):
    """One recipe's counts and the pairs Holm sets aside."""
    pairs = read_table(table)
    chosen = hurt_classes(studies)
    listed = collections.defaultdict(set)
    for student, teacher, name in pairs:
        listed[(student, teacher)].add(name)
    for key in set(listed) | {key for key, (hurt, _) in chosen.items() if hurt}:
        if key not in chosen or chosen[key][0] != listed.get(key, set()):
            raise ValueError(
                f"{table}: {key} lists {sorted(listed.get(key, ()))}; the stored summaries of "
                f"{studies} name {sorted(chosen[key][0]) if key in chosen else 'no such setting'}"
                " uncorrected.")
    kept = {pair: outcome for pair, outcome in pairs.items()
            if pair[2] in chosen[pair[:2]][1]}
    dropped = {pair: outcome for pair, outcome in pairs.items() if pair not in kept}

    def counts(selected):
        return [len(selected)] + [sum(o[key] for o in selected.values())
                                  for key in ("fallback", "back", "mask")]

    missed = {pair: outcome for pair, outcome in kept.items() if not outcome["fallback"]}
    return counts(pairs), counts(kept), dropped, missed


def harm_on_the_seeds_measured(table, studies):
    """A fresh table's pairs against what KD did on the fresh seeds themselves.

    Returns `{(student, teacher, class): (after Holm, shown, outcome)}`: whether the pair
    survives Holm on the seeds that chose it, whether KD is below labels on the class beyond
    noise on the fresh seeds (its own paired 95% CI; the pair was chosen beforehand, so no
    correction), and the table's outcome. Checks that the measured study's difference is the
    table's, to its rounding.
    """
    chosen = hurt_classes(studies)
    with open(os.path.join(STUDY, MEASURED[table], "study.json")) as stream:
        settings = {(s["student"], s["teacher"]): s for s in json.load(stream)["settings"]}
    pairs = {}
    for (student, teacher, name), outcome in read_table(table).items():
        setting = settings[(student, teacher)]
        summary = setting["kd_minus_labels_per_class"]
        index = setting["class_names"].index(name)
        if abs(100 * summary["mean"][index] - outcome["harm"]) > 0.11:
            raise ValueError(f"{table}: {student}, {teacher}, {name}: the table's harm "
                             f"{outcome['harm']:+.1f} is not {MEASURED[table]}'s.")
        pairs[(student, teacher, name)] = (name in chosen[(student, teacher)][1],
                                           summary["ci_high"][index] < 0, outcome)
    return pairs


def _fresh_rows():
    lines, totals = [], np.zeros((2, 5), int)
    for recipe, table, studies in FRESH:
        pairs = harm_on_the_seeds_measured(table, studies).values()
        counts = []
        for selected in (list(pairs), [pair for pair in pairs if pair[0]]):
            counts.append([
                len(selected),
                sum(shown for _, shown, _ in selected),
                sum(shown and o["fallback"] for _, shown, o in selected),
                sum(not shown and o["fallback"] for _, shown, o in selected),
                sum(o["below_labels"] for _, _, o in selected)])
        totals += np.array(counts)
        lines.append(f"| {recipe} | " + " | ".join(map(str, counts[0] + counts[1])) + " |")
    lines.append("| **all** | " + " | ".join(f"**{n}**" for n in totals.ravel()) + " |")
    return lines


def _rows(recipes):
    lines, totals = [], np.zeros((2, 4), int)
    listed = {"dropped": [], "missed": []}
    for recipe, table, studies in recipes:
        every, kept, dropped, missed = recount(table, studies)
        totals += np.array([every, kept])
        lines.append(f"| {recipe} | " + " | ".join(map(str, every + kept)) + " |")
        for name, pairs in (("dropped", dropped), ("missed", missed)):
            listed[name] += [(recipe, pair, outcome) for pair, outcome in sorted(pairs.items())]
    lines.append("| **all** | " + " | ".join(f"**{n}**" for n in totals.ravel()) + " |")
    return lines, listed


def _pair_lines(listed, with_outcome):
    return [f"- {recipe}: `{student}`, `{teacher}`, {name} ({outcome['harm']:+.1f}"
            + (f"; {'recovered' if outcome['fallback'] else 'not recovered'})"
               if with_outcome else ")")
            for recipe, (student, teacher, name), outcome in listed] or ["- none"]


def main():
    header = ["| recipe | pairs KD hurts, each class on its own | recovered (the default with "
              "the fallback) | also back to labels | by the mask alone | pairs after Holm | "
              "recovered | also back to labels | by the mask alone |",
              "|---|---|---|---|---|---|---|---|---|"]
    print("# The classes KD hurts, with and without Holm's correction across classes\n")
    print("Generated by `hurt_recount.py` from the stored `study.json` summaries and the "
          "per-class tables at the fallback's level, 0.2 (nothing trained).\n")
    for title, recipes in (("The seven recipes (classes chosen and measured on the same seeds)",
                            RECIPES),
                           ("Fresh seeds of the base recipe (classes chosen on earlier seeds)",
                            FRESH)):
        lines, listed = _rows(recipes)
        print(f"## {title}\n")
        print("\n".join(header + lines))
        print("\nThe pairs Holm's correction sets aside (KD minus labels on the class over the "
              "seeds measured, points, from the table's rounded means; recovered by the default "
              "with the fallback?):\n")
        print("\n".join(_pair_lines(listed["dropped"], True)))
        print("\nThe pairs left after Holm that the default with the fallback does not recover "
              "(KD minus labels on the class, as above):\n")
        print("\n".join(_pair_lines(listed["missed"], False)))
        print()
    print("## The fresh seeds' pairs against what KD did on those seeds\n")
    print("Each pair was chosen on the seeds before; here it is judged on the fresh seeds "
          "alone: is KD below labels on the class beyond noise there (its own paired 95% CI), "
          "and is the default with the fallback? A pair on which KD shows no harm on the "
          "fresh seeds has none that a recovery could be shown against.\n")
    print("\n".join([
        "| recipe | pairs | KD below labels beyond noise on these seeds | of them recovered | "
        "the other pairs recovered | the default with the fallback below labels beyond noise "
        "| pairs after Holm | KD below labels | of them recovered | the others recovered | "
        "the default with the fallback below labels |",
        "|---|---|---|---|---|---|---|---|---|---|---|"] + _fresh_rows()))
    print()


if __name__ == "__main__":
    main()
