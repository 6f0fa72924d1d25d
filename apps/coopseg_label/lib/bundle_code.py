"""Import modules of the served bundle's ``scripts`` package (the bundle's code, never a copy of it)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType


def bundle_module(bundle: Path, name: str) -> ModuleType:
    """``scripts.<name>`` from ``bundle``.

    MONAI Label's bundle tasks put the bundle first on ``sys.path`` and unload ``scripts`` around each call; this
    does the same, so the module always comes from ``bundle``.
    """
    path = str(bundle)
    sys.path.insert(0, path)
    try:
        module = importlib.import_module(f"scripts.{name}")
        if not Path(module.__file__).resolve().is_relative_to((Path(bundle) / "scripts").resolve()):
            for key in [k for k in sys.modules if k == "scripts" or k.startswith("scripts.")]:
                del sys.modules[key]
            module = importlib.import_module(f"scripts.{name}")
        return module
    finally:
        sys.path.remove(path)
