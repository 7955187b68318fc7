"""A build hook of the documentation site: every public name of the documented modules has a
docstring. A missing one is a warning, and ``mkdocs build --strict`` fails on warnings."""

from __future__ import annotations

import importlib
import inspect
import logging
from typing import Any

log = logging.getLogger("mkdocs.hooks.docstrings")

#: the modules the API reference documents
MODULES = (
    "smi_kernels",
    "smi_kernels.loss",
    "smi_kernels.reference",
    "smi_kernels.flops",
    "smi_kernels.memory",
    "smi_kernels.distributed",
)


def undocumented(module_name: str) -> list[str]:
    """Public functions, classes and methods defined in ``module_name`` with no docstring."""
    module = importlib.import_module(module_name)
    missing = [] if inspect.getdoc(module) else [module_name]
    for name, value in vars(module).items():
        if name.startswith("_") or getattr(value, "__module__", None) != module_name:
            continue
        if not (inspect.isfunction(value) or inspect.isclass(value)):
            continue
        if not inspect.getdoc(value):
            missing.append(f"{module_name}.{name}")
        if inspect.isclass(value):
            for method_name, method in vars(value).items():
                if method_name.startswith("_") or not inspect.isfunction(method):
                    continue
                if not method.__doc__:
                    missing.append(f"{module_name}.{name}.{method_name}")
    return missing


def on_config(config: Any) -> Any:
    """Warn for every public name without a docstring."""
    for module_name in MODULES:
        for name in undocumented(module_name):
            log.warning("%s has no docstring: the API reference would show it bare", name)
    return config
