"""README's "In your own script" runs as written, on a small demo workdir.

The code block is read from README.md itself, so the test fails when the README names a
function, argument or path that does not exist. Only the demo's workdir (a tiny run made
here), the epoch counts and the export's path are replaced.
"""

import os
import re

import numpy as np
import pytest

from tllm_tf.pipeline import stages
from tllm_tf.pipeline.config import RunConfig

README = os.path.join(os.path.dirname(__file__), os.pardir, "README.md")


def _script_block():
    with open(README) as handle:
        text = handle.read()
    section = text.split("## In your own script", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture(scope="module")
def demo_workdir(tmp_path_factory):
    """The teacher and reference stages of the demo's splits (digits, seed 0, 0.2 held out)."""
    workdir = str(tmp_path_factory.mktemp("readme") / "demo")
    for stage in ("teacher", "reference"):
        stages.run(RunConfig(workdir=workdir, stage=stage, dataset="digits", seed=0,
                             holdout_fraction=0.2, teacher_model="cnn_tiny",
                             student_model="mlp_32", epochs=2, teacher_epochs=2, verbose=0))
    return workdir


def test_the_readme_script_runs_as_written(demo_workdir, tmp_path):
    code = _script_block()
    for needed in ("runs/demo", "epochs=40", "warmup_epochs=40", '"student_saved_model"'):
        assert needed in code, f"README's script no longer has {needed!r}: update this test"
    code = (code.replace("runs/demo", demo_workdir)
            .replace("warmup_epochs=40", "warmup_epochs=2").replace("epochs=40", "epochs=2")
            .replace('"student_saved_model"', repr(str(tmp_path / "student_saved_model"))))
    namespace = {}
    exec(compile(code, "README.md (In your own script)", "exec"), namespace)
    assert namespace["check"].kept in ("student", "reference")
    assert 0.0 <= namespace["check"].p_value <= 1.0
    assert isinstance(namespace["distiller"].undistillable_classes, list)
    assert os.path.exists(tmp_path / "student_saved_model" / "saved_model.pb")
    from tllm_tf.pipeline.export import ServingModel
    assert ServingModel(str(tmp_path / "student_saved_model")).class_names == tuple(
        str(digit) for digit in range(10))
    # The refit trained with the first run's classes masked from its first step.
    mask = np.asarray(namespace["refit"].class_mask.numpy())
    assert [c for c in range(10) if mask[c] == 0] == namespace["distiller"].undistillable_classes
