"""The accuracy study's summaries: each setting's arms against labels, KD and their baseline.

Turns the records `tllm_tf.analysis.study.run_study` wrote into one JSON-ready
dict per setting (student, teacher), which `tllm_tf.analysis.study_report`
renders. For each setting: every arm's test accuracy over seeds; each arm
minus the label-only student and minus KD, paired by seed (mean, std, 95%
confidence interval, seeds better/worse); per class, KD minus labels with
its interval (the classes KD hurts beyond noise); and for each TLLM arm which
classes it masked, how often, how often the mask flipped, how often it
masked a class that KD did not hurt, where its gain over KD comes from (the
classes it masked, the others), and what it did for each class KD hurts
beyond noise (minus KD and minus labels on that class); and each seed's
per-class accuracies of every arm, for other tests later. No TensorFlow.
"""

import collections
import dataclasses
import functools

import numpy as np

from tllm_tf.analysis import reporting, study_stats
from tllm_tf.analysis.study_arms import KD_ARM, LABELS_ARM, TEACHER_ARM, TLLM_SUFFIX

# The bound on false alarms: a class that is not behind masked on at most 5% of updates.
FALSE_ALARM_BOUND = 0.05
# Bands of KD minus labels on one class in one seed (test split, accuracy), worst first.
HARM_BANDS = ((-1.0, -0.10), (-0.10, -0.05), (-0.05, -0.02), (-0.02, 0.02), (0.02, 1.0))


def _by_setting(records):
    labels = {(r["seed"], r["student"]): r for r in records if r["arm"] == LABELS_ARM}
    settings = collections.defaultdict(lambda: collections.defaultdict(dict))
    for record in records:
        if record["arm"] in (LABELS_ARM, TEACHER_ARM):
            continue
        settings[(record["student"], record["teacher"])][record["arm"]][record["seed"]] = record
    teachers = {(r["seed"], r["teacher"]): r["accuracy"] for r in records
                if r["arm"] == TEACHER_ARM}
    return labels, settings, teachers


def _baseline(arm, arms, baselines):
    """The student an arm is compared with, if it ran on every seed of KD.

    `baselines[arm]` when given (a second pass: its first), `<loss>` for
    `<loss>_tllm`, else KD.
    """
    loss = arm[:-len(TLLM_SUFFIX)] if arm.endswith(TLLM_SUFFIX) else None
    complete = lambda name: set(arms[KD_ARM]) <= set(arms.get(name, {}))  # noqa: E731
    for candidate in (baselines.get(arm), loss):
        if candidate and complete(candidate):
            return candidate
    return KD_ARM


def _summary(values):
    values = np.asarray(values, float)
    return {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1
            else 0.0}


def _difference(a, b):
    stats = study_stats.paired_difference(a, b)
    return {key: (value.tolist() if isinstance(value, np.ndarray) else
                  (int(value) if isinstance(value, (np.integer,)) else float(value)))
            for key, value in stats.items()}


def _mean_on_hurt_classes(per_class, seed_hurt):
    """Per seed, the mean accuracy over the classes KD hurt in that seed."""
    return np.array([accuracy[hurt].mean() for accuracy, hurt in zip(per_class, seed_hurt)])


def _gain_by_mask(arm_pc, kd_pc, labels_pc, masked):
    """An arm's gain over KD, split between the classes it masked at its end and the others.

    Per seed, the mean over classes of the per-class difference, counting only the classes in
    one part: the two parts add up to the arm minus KD in overall accuracy on a test split with
    as many images of each class (Fashion-MNIST's). The label-only student minus KD on the same
    masked classes is what masking them could give back if nothing else changed.
    """
    def part(per_class, where):  # As many test images of each class.
        return reporting.class_share(per_class, np.ones(masked.shape[1]), where)

    def class_means(where):  # Per class, minus KD averaged over the seeds in `where`.
        counts = where.sum(axis=0)
        sums = ((arm_pc - kd_pc) * where).sum(axis=0)
        return [float(total / count) if count else None for total, count in zip(sums, counts)]

    return {"masked": _difference(part(arm_pc, masked), part(kd_pc, masked)),
            "not_masked": _difference(part(arm_pc, ~masked), part(kd_pc, ~masked)),
            "labels_on_masked": _difference(part(labels_pc, masked), part(kd_pc, masked)),
            "per_class_when_masked": class_means(masked),
            "per_class_when_not_masked": class_means(~masked),
            "seeds_masked_per_class": masked.sum(axis=0).tolist()}


def _false_alarms(masked_rate, seed_hurt):
    """How often an arm masks a class the KD student is not below labels on, in that seed.

    Per seed, the share of updates masking such a class (test split: masking it is a false
    alarm), then its mean over the seeds with a 95% interval (Student's t, clipped at 0) and
    the seeds above the issue's bound: ten seeds' mean alone cannot say whether the bound holds.
    The interval is clipped to [0, 1], the range of a rate.
    """
    per_seed = np.array([rate[~hurt_here].mean() if (~hurt_here).any() else 0.0
                         for rate, hurt_here in zip(masked_rate, seed_hurt)])
    spread = study_stats.paired_difference(per_seed, np.zeros_like(per_seed))
    return {"not_hurt_masked_update_rate": float(per_seed.mean()),
            "not_hurt_masked_update_rate_ci": [max(0.0, float(spread["ci_low"])),
                                               float(np.minimum(1.0, spread["ci_high"]))],
            "seeds_above_false_alarm_bound": int((per_seed > FALSE_ALARM_BOUND).sum())}


def _masked_by_harm(kd_minus_labels, masked):
    """How often an arm ends with a class masked, by how much KD hurt it in that seed."""
    bands = []
    for low, high in HARM_BANDS:
        inside = (kd_minus_labels > low) & (kd_minus_labels <= high)
        bands.append({"low": low, "high": high, "pairs": int(inside.sum()),
                      "masked": float(masked[inside].mean()) if inside.any() else None})
    return bands


@dataclasses.dataclass(frozen=True)
class _Basis:
    """What every arm of a setting is compared with, over the setting's seeds."""

    class_names: list
    labels_acc: np.ndarray
    kd_acc: np.ndarray
    labels_pc: np.ndarray  # seeds x classes
    kd_pc: np.ndarray
    hurt: np.ndarray  # Classes KD hurts beyond noise over the seeds.
    # Classes KD helps beyond noise over the seeds (paired CI above 0): not behind, whatever
    # one seed's test split says. Masking them is a false alarm.
    helped: np.ndarray
    seed_hurt: np.ndarray  # Per seed, the classes the KD student is below labels on.


def _basis(label_records, kd_records):
    labels_pc = np.array([r["per_class_accuracy"] for r in label_records], float)
    kd_pc = np.array([r["per_class_accuracy"] for r in kd_records], float)
    hurt, _ = study_stats.significantly_hurt(kd_pc, labels_pc)
    helped, _ = study_stats.significantly_hurt(labels_pc, kd_pc)
    return _Basis(class_names=kd_records[0]["class_names"],
                  labels_acc=np.array([r["accuracy"] for r in label_records]),
                  kd_acc=np.array([r["accuracy"] for r in kd_records]),
                  labels_pc=labels_pc, kd_pc=kd_pc, hurt=hurt, helped=helped,
                  seed_hurt=kd_pc < labels_pc)


def _arm_summary(arm_records, basis, baseline, baseline_records, other_loss):
    """One arm's entry of a setting's summary.

    Args:
        arm_records: the arm's records, one per seed of the setting.
        basis: the setting's `_Basis`.
        baseline: the name of the arm it is also compared with (`_baseline`).
        baseline_records: that arm's records, one per seed.
        other_loss: whether the arm is a distillation loss other than KD,
            distilled on every class (its `<loss>_tllm` ran too).

    Returns:
        A JSON-ready dict.
    """
    class_names, kd_pc, labels_pc = basis.class_names, basis.kd_pc, basis.labels_pc
    arm_acc = np.array([r["accuracy"] for r in arm_records])
    arm_pc = np.array([r["per_class_accuracy"] for r in arm_records], float)
    masks = [study_stats.mask_matrix(r["masks"]) for r in arm_records]
    final = np.array([m[-1] if len(m) else np.zeros(len(class_names), bool) for m in masks])
    # Records written before "masked_from_start" existed count from all distilled.
    flips = np.array([
        study_stats.flips_per_100_updates(m, r.get("masked_from_start", ())) if len(m)
        else np.zeros(len(class_names)) for m, r in zip(masks, arm_records)])
    masked_rate = np.array([m.mean(axis=0) if len(m) else np.zeros(len(class_names))
                            for m in masks])
    base_acc = np.array([r["accuracy"] for r in baseline_records])
    base_pc = np.array([r["per_class_accuracy"] for r in baseline_records], float)
    entry = {
        "accuracy": _summary(arm_acc),
        "baseline": baseline,
        "minus_baseline": _difference(arm_acc, base_acc),
        "minus_kd": _difference(arm_acc, basis.kd_acc),
        "minus_labels": _difference(arm_acc, basis.labels_acc),
        "masked_at_end_per_class": final.mean(axis=0).tolist(),
        "masked_at_end": float(final.sum(axis=1).mean()),
        "flips_per_100_updates": float(flips.mean()),
        "masked_update_rate_per_class": masked_rate.mean(axis=0).tolist(),
    }
    entry.update(_false_alarms(masked_rate, basis.seed_hurt))
    entry["helped_masked_update_rate"] = (
        float(masked_rate[:, basis.helped].mean()) if basis.helped.any() else None)
    if basis.seed_hurt.any(axis=1).all():
        on_hurt = functools.partial(_mean_on_hurt_classes, seed_hurt=basis.seed_hurt)
        entry["hurt_classes_minus_kd"] = _difference(on_hurt(arm_pc), on_hurt(kd_pc))
        entry["hurt_classes_minus_baseline"] = _difference(on_hurt(arm_pc), on_hurt(base_pc))
    if any(r["masks"] for r in arm_records):
        # A masking arm: where its gain comes from, which classes it names, and what it did
        # for each class KD hurts beyond noise.
        entry["gain_by_mask"] = _gain_by_mask(arm_pc, kd_pc, labels_pc, final)
        entry["masked_by_harm"] = _masked_by_harm(kd_pc - labels_pc, final)
        entry["hurt_class_recovery"] = {
            class_names[c]: {"accuracy": float(arm_pc[:, c].mean()),
                             "minus_kd": _difference(arm_pc[:, c], kd_pc[:, c]),
                             "minus_labels": _difference(arm_pc[:, c], labels_pc[:, c])}
            for c in np.flatnonzero(basis.hurt)}
    if other_loss:
        loss_hurt, _ = study_stats.significantly_hurt(arm_pc, labels_pc)
        entry["minus_labels_per_class"] = _difference(arm_pc, labels_pc)
        entry["hurt_classes"] = [class_names[c] for c in np.flatnonzero(loss_hurt)]
    return entry


def _setting_summary(student, teacher, seeds, arms, labels, teachers, baselines):
    """The summary of one setting: its labels, KD and teacher, then every arm of all `seeds`."""
    basis = _basis([labels[(seed, student)] for seed in seeds],
                   [arms[KD_ARM][seed] for seed in seeds])
    class_names, hurt = basis.class_names, basis.hurt
    setting = {
        "student": student, "teacher": teacher, "seeds": seeds, "class_names": class_names,
        "teacher_accuracy": _summary([teachers[(s, teacher)] for s in seeds
                                      if (s, teacher) in teachers] or [np.nan]),
        "labels": _summary(basis.labels_acc),
        "kd": _summary(basis.kd_acc),
        "kd_minus_labels": _difference(basis.kd_acc, basis.labels_acc),
        "kd_minus_labels_per_class": _difference(basis.kd_pc, basis.labels_pc),
        "hurt_classes": [class_names[c] for c in np.flatnonzero(hurt)],
        # The same with Holm's correction across the classes: where KD hurts none, a ten-class
        # table names one about one time in forty (one in five without).
        "hurt_classes_holm": [class_names[c] for c in np.flatnonzero(
            study_stats.significantly_hurt(basis.kd_pc, basis.labels_pc, "holm")[0])],
        "hurt_class_accuracy": {class_names[c]: {"labels": float(basis.labels_pc[:, c].mean()),
                                                 "kd": float(basis.kd_pc[:, c].mean())}
                                for c in np.flatnonzero(hurt)},
        "arms": {},
    }
    for arm, by_seed in sorted(arms.items()):
        if arm == KD_ARM or not all(seed in by_seed for seed in seeds):
            continue
        baseline = _baseline(arm, arms, baselines)
        setting["arms"][arm] = _arm_summary(
            [by_seed[seed] for seed in seeds], basis, baseline,
            [arms[baseline][seed] for seed in seeds],
            other_loss=f"{arm}{TLLM_SUFFIX}" in arms)
    # Each seed's per-class test accuracy of every arm summarised, so that a stored summary can
    # be tested again in other ways than its tables' (seeds in `seeds`' order).
    setting["per_class_by_seed"] = {
        LABELS_ARM: basis.labels_pc.tolist(), KD_ARM: basis.kd_pc.tolist(),
        **{arm: [arms[arm][seed]["per_class_accuracy"] for seed in seeds]
           for arm in setting["arms"]}}
    # Of the arms finished on every seed whose records carry them: the wall time of the runs
    # trained in one process (studies before 2026-12-03 kept none; a resumed run's counts its
    # last process only), and the seeds whose student is the label-only one, handed over by
    # --reference_fallback (records say what it kept since 2026-12-07, with it on).
    setting["minutes_per_run"], setting["handed_over_to_labels"] = {}, {}
    for arm, by_seed in sorted(arms.items()):
        if not all(seed in by_seed for seed in seeds):
            continue
        seconds = [by_seed[seed].get("seconds") for seed in seeds
                   if not by_seed[seed].get("resumed")]
        if seconds and None not in seconds:
            setting["minutes_per_run"][arm] = float(np.mean(seconds)) / 60.0
        kept = [by_seed[seed].get("kept") for seed in seeds]
        if None not in kept:
            setting["handed_over_to_labels"][arm] = kept.count("reference")
    return setting


def summarise(records, baselines=None):
    """Summaries of every setting; see the module docstring.

    A setting is summarised on the seeds where both its KD arm and the
    label-only student finished, and shows the arms that finished on all of
    them (`study_report.left_out` names the others).

    Args:
        records: result records of `run_study` (dicts).
        baselines: dict from an arm to the arm it is also compared with, paired by
            seed (`study_arms.paired_baselines()`: a second pass and its first).
            Defaults to none: `<loss>_tllm` against `<loss>`, every other arm
            against KD only.

    Returns:
        A list of per-setting dicts, JSON-ready.
    """
    labels, settings, teachers = _by_setting(records)
    summaries = []
    for (student, teacher), arms in sorted(settings.items()):
        if KD_ARM not in arms:
            continue
        seeds = sorted(seed for seed in arms[KD_ARM] if (seed, student) in labels)
        if seeds:
            summaries.append(_setting_summary(student, teacher, seeds, arms, labels, teachers,
                                              baselines or {}))
    return summaries
