"""The package's layers point one way, with no import cycle (read from the source, nothing imported).

    core (tllm_tf/*.py)  <-  data, models  <-  pipeline  <-  analysis  <-  tools/

A module may import its own layer and the layers below it. `tllm_tf/__init__.py`
names the public API as strings, loaded on first use, and imports none of it.
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "tllm_tf"
RANKS = {"core": 0, "data": 1, "models": 1, "pipeline": 2, "analysis": 3}
TENSORFLOW = ("tensorflow", "keras", "tensorflow_datasets", "jax", "torch")


def _module_name(path):
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules():
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _layer(module):
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in RANKS) else "core"


def _imports(path, modules, top_level_only=False):
    """The modules `path` imports: package modules by name, others by top-level name."""
    tree = ast.parse(path.read_text(), filename=str(path))
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                # `from tllm_tf import losses` imports the module tllm_tf.losses.
                child = f"{node.module}.{alias.name}"
                found.add(child if child in modules else node.module)
    return {name if name in modules else name.split(".")[0] for name in found}


def _graph():
    modules = _modules()
    return {name: _imports(path, modules) & set(modules) - {name}
            for name, path in modules.items()}


def test_the_layers_are_the_four_packages_and_the_core():
    layers = {_layer(module) for module in _modules()}
    assert layers == set(RANKS), layers
    assert _layer("tllm_tf.distiller") == "core" and _layer("tllm_tf.pipeline") == "pipeline"


def test_no_module_imports_a_layer_above_it():
    upward = [
        f"{module} ({_layer(module)}) imports {imported} ({_layer(imported)})"
        for module, imported_modules in _graph().items() if module != "tllm_tf"
        for imported in sorted(imported_modules)
        if RANKS[_layer(imported)] > RANKS[_layer(module)]
        # data and models are side by side: neither imports the other.
        or {_layer(module), _layer(imported)} == {"data", "models"}
    ]
    assert not upward, "\n".join(upward)


def test_no_import_cycle():
    graph = _graph()
    state = {}
    cycles = []

    def visit(module, path):
        state[module] = "open"
        for imported in sorted(graph[module]):
            if state.get(imported) == "open":
                cycles.append(path[path.index(imported):] + [imported])
            elif imported not in state:
                visit(imported, path + [imported])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(" -> ".join(cycle) for cycle in cycles)


def test_the_library_imports_no_tool_and_no_flags():
    modules = _modules()
    tools = {path.stem for path in (ROOT / "tools").glob("*.py")}
    for name, path in modules.items():
        imported = _imports(path, modules)
        assert not imported & tools, (name, imported & tools)
        assert "absl" not in imported or name.endswith("console"), name


@pytest.mark.parametrize("start", ["tllm_tf.analysis.reporting", "tllm_tf.pipeline.workdir_files",
                                   "tllm_tf.pipeline.console", "tllm_tf"])
def test_what_reads_a_workdir_loads_no_tensorflow_when_imported(start):
    """Module-level imports only: tools/report.py loads TensorFlow only for --model_paths."""
    modules = _modules()
    seen, stack = set(), [start]
    while stack:
        module = stack.pop()
        if module in seen:
            continue
        seen.add(module)
        # Importing a.b.c runs the __init__ of a and of a.b first.
        parents = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)}
        imported = _imports(modules[module], modules, top_level_only=True) | parents
        loaded = imported & set(TENSORFLOW)
        assert not loaded, f"{start} -> ... -> {module} imports {sorted(loaded)}"
        stack.extend(imported & set(modules))
