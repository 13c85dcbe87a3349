"""README's "Adding a method": one function and one registry line, and the command line takes it.

The example runs in a process of its own, as a user's module would (forked
from tests/zygote.py, which has imported TensorFlow and Keras but no registry
of tllm_tf): it registers a distillation loss and a masked-class policy (and the
test a second policy, the same way), then tools/run_flags.py parses them as flag
values, `RunConfig` accepts them and a `Distiller` trains with them, its loss the
one computed by hand. No other file is edited.
"""

import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The README's example, verbatim from `# my_method.py` to the registry lines.
EXAMPLE = '''
import keras
from keras import ops
from tllm_tf import losses, policies

def squared_logit_loss(teacher_logits, student_logits, labels=None, *, temperature=4.0):
    """Per-sample mean squared difference of the logits, scaled by 1/T^2."""
    return ops.mean(ops.square(teacher_logits - student_logits), axis=-1) / temperature**2

@keras.saving.register_keras_serializable(package="my_methods")  # so .keras files load it
class SquaredLogitLoss(losses.LogitDistillationLoss):
    function = staticmethod(squared_logit_loss)

losses.DISTILLATION_LOSSES["squared_logits"] = SquaredLogitLoss

def label_only(inputs):
    """A masked class learns from its label alone, at the distillation term's weight."""
    return inputs.distil_weight * inputs.distillation_loss + (1 - inputs.distil_weight) * inputs.student_loss

policies.POLICIES["label_only"] = label_only
'''

# label_only is the default policy, hard_label, under another name: only a policy that
# differs shows that the Distiller trains with the registry's entry.
SECOND_POLICY = '''
def half_label(inputs):
    """A masked class learns from half its label loss."""
    return (inputs.distil_weight * inputs.distillation_loss
            + (1 - inputs.distil_weight) * 0.5 * inputs.student_loss)

policies.POLICIES["half_label"] = half_label
'''

CHECK = '''
import sys
import keras
import numpy as np
sys.path.insert(0, "tools")
import run_flags
run_flags.FLAGS(["train.py", "--workdir=unused", "--distillation_loss=squared_logits",
                 "--masked_class_policy=label_only", "--refit_policy=half_label",
                 "--temperature=2"])
config = run_flags.config_from_flags()
loss = losses.get_distillation_loss(config.distillation_loss, **config.distillation_loss_kwargs())
assert losses.get_distillation_loss("squared_logits").temperature == 4.0  # Named alone.
import tllm_tf
keras.utils.set_random_seed(0)
def model():
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
student, teacher = model(), model()
distiller = tllm_tf.Distiller(student, teacher)
x, y = np.random.rand(16, 4).astype("float32"), np.arange(16) % 3
masked = y == 0
for policy, label_weight in ((config.masked_class_policy, 1.0), (config.refit_policy, 0.5)):
    distiller.compile(optimizer="sgd", distillation_loss_fn=loss, masked_class_policy=policy)
    distiller.set_class_mask([0.0, 1.0, 1.0])
    s, t = (np.asarray(m(x), np.float64) for m in (student, teacher))
    cross_entropy = np.log(np.exp(s).sum(axis=1)) - s[np.arange(16), y]
    squared = ((t - s) ** 2).mean(axis=1) / 2**2
    by_hand = np.mean(0.1 * cross_entropy
                      + 0.9 * np.where(masked, label_weight * cross_entropy, squared))
    # One step over the whole set: the loss it logs is the one before its update.
    history = distiller.fit(x, y, batch_size=16, verbose=0)
    np.testing.assert_allclose(history.history["loss"][0], by_hand, rtol=1e-5, err_msg=policy)
# Registered, the loss is saved in a .keras file and loaded back (the policy by its name).
import os, tempfile
path = os.path.join(tempfile.mkdtemp(), "distiller.keras")
distiller.save(path)
loaded = keras.saving.load_model(path)
assert type(loaded.distillation_loss_fn).__name__ == "SquaredLogitLoss"
assert loaded.masked_class_policy == config.refit_policy
print("OK", type(loss).__name__, loss.temperature, config.masked_class_policy,
      config.refit_policy)
'''


def test_a_registered_loss_and_policy_reach_the_command_line_and_train(zygote):
    result = zygote.run(["-c", EXAMPLE + SECOND_POLICY + CHECK], timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines()[-1] == "OK SquaredLogitLoss 2.0 label_only half_label"


def test_the_readme_shows_this_example():
    with open(os.path.join(ROOT, "README.md")) as handle:
        readme = handle.read()
    for line in EXAMPLE.strip().splitlines():
        assert line in readme, line
