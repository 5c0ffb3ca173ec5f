"""The docs' generator scripts (docs/gen_*.py), loaded as modules for the tests that check what they write."""

from __future__ import annotations

import importlib.util
from types import ModuleType

from shared.config import PROJECT_ROOT


def load(name: str) -> ModuleType:
    """docs/``name``.py as a fresh module: ``load("gen_config")``."""
    spec = importlib.util.spec_from_file_location(name, PROJECT_ROOT / "docs" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
