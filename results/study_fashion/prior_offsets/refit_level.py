"""The refit's safeguard judged at other levels, from its stored p-values (docs/study.md).

`--refit_fallback` keeps the tllm student's weights when the tllm_refit student
is behind it on the held-out split, judged at the rule's `--significance`
(0.05). The reference's fallback got its own level, 0.2; this script asks
whether the refit's safeguard would gain from one too. Every stored refit's
`refit_check.json` holds the p-value, and both students' test accuracies are
in their `test_per_class.json`, so each level is judged without training: at
level L the default's student is the tllm student where p < L, the refit
elsewhere. The students are those of the study (trained with
`--noreference_fallback`): the reference's fallback, which judges whichever
student the safeguard kept, is left out.

    .venv/bin/python results/study_fashion/prior_offsets/refit_level.py \
        --levels=0.05,0.2 "base, 600 a class=runs/ro_a,runs/ro_b"

Each positional argument names a recipe and its study roots (`NAME=ROOT,ROOT`,
or `NAME=ARM:ROOT,ROOT` where the default's arm is not `tllm_refit`); a
setting's seed found under two roots of one recipe is read once, from the
first.
"""

import argparse
import collections
import json
import os

import numpy as np

import apply  # results/study_fashion/prior_offsets/apply.py: the seeds' folders, the cells.
from tllm_tf.pipeline import workdir_files


def stored_refits(roots, arm):
    """`{(student, teacher): {seed: (p_value, tllm accuracy, refit accuracy)}}` of the roots.

    Args:
        roots: the study roots of one recipe.
        arm: the default's arm in them (its workdir holds both students).
    """
    settings = collections.defaultdict(dict)
    for root in roots:
        for seed, folder in sorted(apply.seed_folders([root]).items()):
            _read_seed(settings, seed, folder, arm)
    return settings


def _read_seed(settings, seed, folder, arm):
    """Adds a seed folder's refits of `arm` to `settings`, unless a root before had them."""
    for student in sorted(os.listdir(folder)):
        if not os.path.isdir(os.path.join(folder, student)):
            continue
        for teacher in sorted(os.listdir(os.path.join(folder, student))):
            workdir = os.path.join(folder, student, teacher, arm)
            tllm, refit = (os.path.join(workdir, workdir_files.student_stage(kind))
                           for kind in ("tllm", "tllm_refit"))
            check = os.path.join(refit, workdir_files.REFIT_CHECK_FILE)
            if os.path.exists(check) and seed not in settings[(student, teacher)]:
                settings[(student, teacher)][seed] = (
                    _read(check)["p_value"], _test_accuracy(tllm), _test_accuracy(refit))


def _read(path):
    with open(path) as file:
        return json.load(file)


def _test_accuracy(stage_dir):
    return _read(os.path.join(stage_dir, workdir_files.PER_CLASS_FILE))["accuracy"]


def table(recipes, levels):
    """Markdown lines: per recipe and setting, what each level keeps and its test accuracy.

    Args:
        recipes: `[(name, arm, roots)]`.
        levels: the levels; the first is the baseline of the differences.
    """
    header = (["recipe", "student, teacher", "seeds"]
              + [f"keeps the tllm student at {level:g}" for level in levels]
              + [f"{level:g} minus {levels[0]:g}" for level in levels[1:]])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, arm, roots in recipes:
        for (student, teacher), seeds in sorted(stored_refits(roots, arm).items()):
            stored = np.array([seeds[seed] for seed in sorted(seeds)])
            p_value, tllm, refit = stored[:, 0], 100 * stored[:, 1], 100 * stored[:, 2]
            kept = {level: np.where(p_value < level, tllm, refit) for level in levels}
            lines.append(
                f"| {name} | `{student}`, `{teacher}` | {len(seeds)} | "
                + " | ".join(str(int(np.sum(p_value < level))) for level in levels) + " | "
                + " | ".join(apply.paired_cell(kept[level], kept[levels[0]])
                             for level in levels[1:]) + " |")
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="0.05,0.2",
                        help="comma-separated levels; the first is the baseline")
    parser.add_argument("recipes", nargs="+", help="NAME=ROOT,ROOT,... or NAME=ARM:ROOT,...")
    args = parser.parse_args()
    recipes = []
    for recipe in args.recipes:
        name, _, roots = recipe.rpartition("=")
        arm, _, roots = roots.rpartition(":")
        recipes.append((name, arm or "tllm_refit", roots.split(",")))
    print("\n".join(table(recipes, [float(level) for level in args.levels.split(",")])))
    print("\nThe default's test accuracy with the safeguard at each level, paired by seed "
          "(points, 95% CI, seeds better/worse); the study's students, without the "
          "reference's fallback.")


if __name__ == "__main__":
    main()
