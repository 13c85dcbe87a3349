"""The data flags, defined once: tools/train.py and tools/study.py (through run_flags.py), and
tools/evaluate.py and tools/report.py, which name a run's splits by the run's own data flags.

Defaults come from `RunConfig` and choices from the data registry, so a run's flags (or
its flag file) select the same splits and evaluation transform in every tool.
"""

import os

from absl import flags

from tllm_tf import data as data_lib
from tllm_tf.data.augment import AUGMENTATIONS
from tllm_tf.pipeline import config as config_lib
from tllm_tf.pipeline import model_origin

_DEFAULTS = config_lib.RunConfig(workdir="")
SPLITS = ("test", "held_out")
# Evaluation keeps no gradients: bigger batches than training's are cheap.
EVALUATION_BATCH_SIZE = 256

flags.DEFINE_string("dataset", _DEFAULTS.dataset, "Data set: digits (embedded), fashion_mnist (Debian dataset-fashion-mnist or prepared tfds), image_folder, or a tfds name (cifar100, imagenet2012, ...).")
flags.DEFINE_string("data_dir", None, "tfds data directory.")
flags.DEFINE_string("manual_dir", None, "tfds manual download directory (imagenet2012).")
flags.DEFINE_float("holdout_fraction", _DEFAULTS.holdout_fraction,
                   "Share of each class of the training split held out to find "
                   "undistillable classes.")
flags.DEFINE_string("image_folder", None, "--dataset=image_folder: a folder of class folders.")
flags.DEFINE_string("test_image_folder", None, "--dataset=image_folder: its test folder.")
flags.DEFINE_integer("image_size", None, "Side of the images the model sees (image folders: "
                     "default 224; ImageNet-size tfds sets).")
flags.DEFINE_enum("augmentation", _DEFAULTS.augmentation, sorted(AUGMENTATIONS),
                  "Per-image augmentation recipe (teacher and student see the same images; "
                  "evaluation applies its evaluation transform).")
flags.DEFINE_integer("seed", _DEFAULTS.seed, "Seed of splits, initialisation and shuffling.")
flags.DEFINE_integer("batch_size", _DEFAULTS.batch_size, "Global batch size.")

FLAGS = flags.FLAGS


def define_evaluation_flags():
    """--split, and a larger --batch_size default: tools/evaluate.py and tools/report.py."""
    flags.DEFINE_enum("split", "test", SPLITS, "Which split to evaluate on.")
    FLAGS.set_default("batch_size", EVALUATION_BATCH_SIZE)


def load_batches(model_paths=()):
    """Returns `(batches, class_names)` of the split the flags name.

    Models trained in a workdir are checked against its data flags and its
    evaluation's preprocessing first (`model_origin.check_evaluation_splits`,
    `check_evaluation_preprocessing`), and on an image folder against its
    files (`model_origin.check_evaluation_images`).
    """
    for path in model_paths:
        model_origin.check_evaluation_splits(path, dataset=FLAGS.dataset, seed=FLAGS.seed,
                                             holdout_fraction=FLAGS.holdout_fraction)
        model_origin.check_evaluation_preprocessing(
            path, dataset=FLAGS.dataset, augmentation=FLAGS.augmentation,
            image_size=FLAGS.image_size)
    paths = {name: FLAGS[name].value and os.path.expanduser(FLAGS[name].value)
             for name in ("data_dir", "manual_dir", "image_folder", "test_image_folder")}
    data = data_lib.load_dataset(
        FLAGS.dataset, holdout_fraction=FLAGS.holdout_fraction, seed=FLAGS.seed,
        image_size=FLAGS.image_size, **paths)
    for path in model_paths:
        model_origin.check_evaluation_images(path, data, FLAGS.split, paths["test_image_folder"])
    batches = data_lib.make_pipeline(
        getattr(data, FLAGS.split), batch_size=FLAGS.batch_size, training=False,
        augmentation=FLAGS.augmentation, image_size=data_lib.augmentation_image_size(
            FLAGS.dataset, FLAGS.augmentation, FLAGS.image_size))
    return batches, list(data.class_names)
