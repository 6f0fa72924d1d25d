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

from collections.abc import Iterator  # noqa: E402

import pytest  # noqa: E402

# Packages the MONAI Label app imports by top-level name: its own `lib` and `main`, and the served bundle's `scripts`,
# which it re-imports from whichever bundle copy it serves (as MONAI Label does).
_APP_IMPORTED = ("scripts", "lib", "main")


@pytest.fixture(autouse=True)
def _restore_app_imports() -> Iterator[None]:
    """Put ``sys.path`` and the modules above back as they were after every test, so a test that runs the app
    in-process (serving a temporary bundle copy) cannot leave later tests with that copy's ``scripts`` classes."""
    saved_path = list(sys.path)
    saved = {k: v for k, v in sys.modules.items() if k.split(".")[0] in _APP_IMPORTED}
    yield
    for key in [k for k in sys.modules if k.split(".")[0] in _APP_IMPORTED]:
        del sys.modules[key]
    sys.modules.update(saved)
    sys.path[:] = saved_path


@pytest.fixture
def app_modules(monkeypatch: pytest.MonkeyPatch):
    """The MONAI Label app's ``main``, imported as MONAI Label imports it (app folder first on ``sys.path``), without
    the datastore's watchdog thread or background scoring; imports are restored after the test."""
    from monailabel.config import settings

    monkeypatch.setattr(settings, "MONAI_LABEL_DATASTORE_AUTO_RELOAD", False)
    monkeypatch.setattr(settings, "MONAI_LABEL_AUTO_UPDATE_SCORING", False)
    sys.path.insert(0, str(REPO_ROOT / "apps" / "coopseg_label"))
    import main

    return main
