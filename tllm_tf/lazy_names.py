"""A package's names loaded on first use (PEP 562), so that importing it loads nothing heavy.

`tllm_tf` loads its public names so (tools/report.py imports modules of the
package that need no TensorFlow), and `tllm_tf.data` its tfds loader (loading
the other data sets does not import tfds).
"""

import importlib


def module_attributes(package, exports, namespace):
    """The `__getattr__` and `__dir__` of a package whose `exports` load on first use.

    A name of `exports` is imported from its module when first read and then
    kept in `namespace`; any other name is tried as a submodule, as a package
    that imported its submodules eagerly would have them
    (`tllm_tf.losses` after a bare `import tllm_tf`).

    Args:
        package: the package's `__name__`.
        exports: dict, name -> the module that defines it.
        namespace: the package's `globals()`.

    Returns:
        `(__getattr__, __dir__)`, to assign at the package's top level.
    """

    def __getattr__(name):
        if name in exports:
            value = getattr(importlib.import_module(exports[name]), name)
        else:
            try:
                value = importlib.import_module(f"{package}.{name}")
            except ModuleNotFoundError as error:
                if error.name != f"{package}.{name}":
                    raise
                raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        namespace[name] = value
        return value

    def __dir__():
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
