"""README's "Adding a method": one function and one registry line, and the command line takes it.

The example runs in a process of its own, as a user's module would (forked
from tests/zygote.py, which has imported TensorFlow and Keras but no registry
of tllm_tf): it registers a distillation loss and a masked-class policy, then
tools/run_flags.py parses them as flag values, `RunConfig` accepts them and a
`Distiller` trains with them. No other file is edited.
"""

import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The README's example, verbatim from `# my_method.py` to the registry lines.
EXAMPLE = '''
from keras import ops
from tllm_tf import losses, policies

def squared_logit_loss(teacher_logits, student_logits, labels=None, *, temperature):
    """Per-sample mean squared difference of the logits, scaled by 1/T^2."""
    return ops.mean(ops.square(teacher_logits - student_logits), axis=-1) / temperature**2

class SquaredLogitLoss(losses.LogitDistillationLoss):
    function = staticmethod(squared_logit_loss)

losses.DISTILLATION_LOSSES["squared_logits"] = SquaredLogitLoss

def label_only(inputs):
    """A masked class learns from its label alone, at the distillation term's weight."""
    return inputs.distil_weight * inputs.distillation_loss + (1 - inputs.distil_weight) * inputs.student_loss

policies.POLICIES["label_only"] = label_only
'''

CHECK = '''
import sys
import keras
import numpy as np
sys.path.insert(0, "tools")
import run_flags
run_flags.FLAGS(["train.py", "--workdir=unused", "--distillation_loss=squared_logits",
                 "--masked_class_policy=label_only", "--temperature=2"])
config = run_flags.config_from_flags()
loss = losses.get_distillation_loss(config.distillation_loss, **config.distillation_loss_kwargs())
import tllm_tf
keras.utils.set_random_seed(0)
def model():
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
distiller = tllm_tf.Distiller(model(), model())
distiller.compile(optimizer="sgd", distillation_loss_fn=loss,
                  masked_class_policy=config.masked_class_policy)
distiller.set_class_mask([0.0, 1.0, 1.0])
history = distiller.fit(np.random.rand(16, 4).astype("float32"), np.arange(16) % 3, verbose=0)
print("OK", type(loss).__name__, loss.temperature, distiller.masked_class_policy,
      np.isfinite(history.history["loss"][-1]))
'''


def test_a_registered_loss_and_policy_reach_the_command_line_and_train(zygote):
    result = zygote.run(["-c", EXAMPLE + CHECK], timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines()[-1] == "OK SquaredLogitLoss 2.0 label_only True"


def test_the_readme_shows_this_example():
    with open(os.path.join(ROOT, "README.md")) as handle:
        readme = handle.read()
    for line in EXAMPLE.strip().splitlines():
        assert line in readme, line
