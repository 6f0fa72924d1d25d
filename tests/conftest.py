"""Shared test setup: the bundle's ``scripts`` package is importable, as MONAI bundles import it, and so are the
repository's ``tools``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
BUNDLE_ROOT = REPO_ROOT / "bundle"
for path in (BUNDLE_ROOT, REPO_ROOT):  # the bundle's `scripts` package and the repository's `tools`
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
# Subprocesses (python -m monai.bundle ...) import the same package.
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(BUNDLE_ROOT), os.environ.get("PYTHONPATH")) if p)
