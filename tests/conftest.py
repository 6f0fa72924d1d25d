"""Shared test setup: the bundle's ``scripts`` package is importable, as MONAI bundles import it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
BUNDLE_ROOT = REPO_ROOT / "bundle"
if str(BUNDLE_ROOT) not in sys.path:
    sys.path.insert(0, str(BUNDLE_ROOT))
# Subprocesses (python -m monai.bundle ...) import the same package.
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(BUNDLE_ROOT), os.environ.get("PYTHONPATH")) if p)
