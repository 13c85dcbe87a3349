"""What a run settles before its stages train, and the masks it takes from an earlier run.

`prepare` checks the run on every worker (`cluster_config`, `preflight`),
loads its data, claims its workdir and finds the teacher and reference files
the students read. A run's `masked_classes` can grow from an earlier run's
final mask: `--masked_classes_from` at the start, and the tllm_refit student
from the tllm student of the same run (`refit_config`).
"""

import dataclasses
import os

from tllm_tf.data.sources import IMAGE_FOLDER
from tllm_tf.pipeline import build
from tllm_tf.pipeline import cluster_config
from tllm_tf.pipeline import fitting
from tllm_tf.pipeline import multi_worker
from tllm_tf.pipeline import preflight
from tllm_tf.pipeline import stage_inputs
from tllm_tf.pipeline import workdir as workdir_lib
from tllm_tf.pipeline.strategy import is_chief
from tllm_tf.pipeline.workdir_files import CONFIG_FILE
from tllm_tf.pipeline.workdir_files import MODEL_FILE
from tllm_tf.pipeline.workdir_files import REFERENCE_FILE
from tllm_tf.pipeline.workdir_files import REFERENCE_STAGE
from tllm_tf.pipeline.workdir_files import TEACHER_STAGE


def prepare(config, strategy):
    """Checks `config`, loads its data and claims the workdir, before anything trains.

    Args:
        config: the run's `RunConfig`.
        strategy: its `tf.distribute` strategy.

    Returns:
        `(config, data, teacher_path, reference_path)`: the config with an
        earlier run's mask applied (`masked_classes_from`), the `DataSplits`,
        and the teacher and reference files the students read.

    Raises:
        ValueError: on a run refused before it trains (see `preflight`).
    """
    cluster_config.check_same_config(strategy, dataclasses.asdict(config))
    data = preflight.check(config, strategy, build.load_data)
    multi_worker.run_on_chief(strategy, lambda: _check_teacher_trained(config))
    if config.masked_classes_from and "student" in config.stages:
        config = _with_earlier_mask(config, strategy, data.num_classes)
    multi_worker.run_on_chief(
        strategy, lambda: workdir_lib.claim(config.workdir, config, data.split_digests))
    teacher_path = config.teacher_path or os.path.join(
        config.workdir, TEACHER_STAGE, MODEL_FILE)
    reference_path = config.reference_path or os.path.join(
        config.workdir, REFERENCE_STAGE, REFERENCE_FILE)
    if config.epoch_matched and "student" in config.stages and "tllm" in config.students:
        # A reference that exists already must have its per-epoch accuracy:
        # refuse it now rather than after the teacher has trained.
        def check_reference():
            if os.path.exists(reference_path):
                stage_inputs.read_reference(reference_path, data.num_classes, epoch_matched=True)

        multi_worker.run_on_chief(strategy, check_reference)
    if config.reference_fallback and "student" in config.stages:
        # Refused before anything trains, not once the first student has.
        # Whether the reference exists is asked on the chief: the other
        # workers' own workdirs hold nothing, and every worker must make the
        # same collective call.
        def check_reference_model():
            if (config.reference_path or REFERENCE_STAGE not in config.stages
                    or os.path.exists(reference_path)):
                stage_inputs.check_reference_model(reference_path)

        multi_worker.run_on_chief(strategy, check_reference_model)
    # Said once nothing more can refuse the run, which then leaves nothing behind.
    chief = is_chief(strategy)
    fitting.say(config.verbose, chief, f"Writing to {config.workdir} (all flags: "
                f"{os.path.join(config.workdir, CONFIG_FILE)}).")
    if config.dataset == IMAGE_FOLDER and config.image_size is None:
        # 224 for photographs; for small images it costs many times the pixels, unsaid.
        height, width = data.image_shape[:2]
        fitting.say(config.verbose, chief,
                    f"--image_size not given: every image of --image_folder is resized to "
                    f"{height}x{width} (pass --image_size=N for N x N).")
    never_reached = preflight.decays_never_reached(config)
    if never_reached:
        fitting.say(config.verbose, chief, never_reached)
    steps = build.steps_per_epoch(data, config)
    executed = build.steps_per_execution(steps, config.steps_per_execution)
    if executed != config.steps_per_execution:
        fitting.say(config.verbose, chief,
                    f"--steps_per_execution={config.steps_per_execution}: using {executed}, "
                    f"the largest divisor of the {steps} steps of an epoch (a whole "
                    "execution would run into the next epoch's batches).")
    return config, data, teacher_path, reference_path


def _check_teacher_trained(config):
    """Refuses students or a store that need this workdir's teacher, where it has none.

    Found when the student stage loaded it, the refusal left that stage's
    folder, which then made the workdir's run look begun with another teacher.
    """
    needs_teacher = {"student", "store"} & set(config.stages)
    if config.teacher_path or TEACHER_STAGE in config.stages or not needs_teacher:
        return
    # Finished as `fitting.done` counts it: a teacher killed while its test split was
    # evaluated has its model file and is not finished.
    missing = fitting.missing_files(os.path.join(config.workdir, TEACHER_STAGE))
    if missing:
        raise ValueError(
            f"--stage={config.stage} needs the teacher this workdir trains, and {missing[0]} "
            "does not exist (the teacher stage has not finished): run --stage=teacher (or "
            "--stage=all) in this workdir first, or pass --teacher_path.")


def _with_earlier_mask(config, strategy, num_classes):
    """`config` with the final mask of `--masked_classes_from` added to its `masked_classes`.

    The classes land in the config the workdir records, so a resumed run masks the same ones.
    """
    earlier = stage_inputs.final_mask_on_every_worker(
        strategy, config.masked_classes_from, num_classes)
    if earlier:
        line = (f"--masked_classes_from={config.masked_classes_from}: it masked classes "
                f"{list(earlier)} at its end; this run masks them from the first step")
    else:
        line = f"--masked_classes_from={config.masked_classes_from}: it masked no class"
    fitting.say(config.verbose, is_chief(strategy), line)
    return _masking_also(config, earlier)


def refit_config(config, strategy, data, label):
    """`config` for the tllm_refit student: the second of the two runs, in this run.

    The classes the tllm student (trained before it, in this workdir) had
    masked when it finished are masked from the first step under
    `--refit_policy`, and the mask is kept as it is: the warm-up lasts the
    whole run, so no update judges the classes again under the new policy.
    Read from the finished tllm student each time, so a resumed refit masks
    the same classes.
    """
    final = stage_inputs.final_mask_on_every_worker(strategy, config.workdir, data.num_classes)
    names = ", ".join(data.class_names[c] for c in final) or "none"
    fitting.say(config.verbose, is_chief(strategy),
                f"{label}: the tllm student ended with {len(final)} classes masked ({names}); "
                f"masked here from the first step under {config.refit_policy}")
    return _masking_also(config, final, masked_class_policy=config.refit_policy,
                         warmup_epochs=config.epochs)


def _masking_also(config, classes, **changes):
    """`config` with `classes` added to its `masked_classes`, and `changes`."""
    return dataclasses.replace(
        config, masked_classes=tuple(sorted(set(config.masked_classes) | set(classes))),
        **changes)
