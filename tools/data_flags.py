"""The data flags of tools/evaluate.py and tools/report.py, and the batches they name.

The flags have the names and defaults of tools/train.py's, so a run's data
flags (or its flag file) select the same splits and evaluation transform.
"""

from absl import flags

from tllm_tf.pipeline import config as config_lib
from tllm_tf import data as data_lib

_DEFAULTS = config_lib.RunConfig(workdir="")
SPLITS = ("test", "held_out")

flags.DEFINE_string("dataset", _DEFAULTS.dataset,
                    "Data set: digits (embedded), image_folder, or a tfds name.")
flags.DEFINE_enum("split", "test", SPLITS, "Which split to evaluate on.")
flags.DEFINE_string("data_dir", None, "tfds data directory.")
flags.DEFINE_string("manual_dir", None, "tfds manual download directory (imagenet2012).")
flags.DEFINE_string("image_folder", None, "--dataset=image_folder: a folder of class folders.")
flags.DEFINE_string("test_image_folder", None, "--dataset=image_folder: its test folder.")
flags.DEFINE_integer("image_size", None, "Side of the images the model sees (folders, ImageNet).")
flags.DEFINE_enum("augmentation", _DEFAULTS.augmentation, ["none", "cifar", "imagenet"],
                  "The run's recipe; its evaluation transform is applied.")
flags.DEFINE_integer("seed", _DEFAULTS.seed, "The run's --seed (it fixes the splits).")
flags.DEFINE_float("holdout_fraction", _DEFAULTS.holdout_fraction,
                   "The run's --holdout_fraction (it fixes the held-out split).")
flags.DEFINE_integer("batch_size", 256, "Evaluation batch size.")

FLAGS = flags.FLAGS


def load_batches():
    """Returns `(batches, class_names)` of the split the flags name."""
    data = data_lib.load_dataset(
        FLAGS.dataset, holdout_fraction=FLAGS.holdout_fraction, seed=FLAGS.seed,
        data_dir=FLAGS.data_dir, manual_dir=FLAGS.manual_dir, image_folder=FLAGS.image_folder,
        test_image_folder=FLAGS.test_image_folder, image_size=FLAGS.image_size)
    batches = data_lib.make_pipeline(
        getattr(data, FLAGS.split), batch_size=FLAGS.batch_size, training=False,
        augmentation=FLAGS.augmentation, image_size=FLAGS.image_size)
    return batches, list(data.class_names)
