"""Developer tools that do not ship in the released bundle: release packaging (``release``), the model-zoo checks
(``zoo_checks``), the robustness experiment (``robustness``) and machine descriptions for reports (``machine``).

Run them from the repository root (``python -m tools.<name>``); they import the bundle's ``scripts`` package, which
this module puts on ``sys.path``.
"""

import sys
from pathlib import Path

BUNDLE = Path(__file__).resolve().parent.parent / "bundle"
if str(BUNDLE) not in sys.path:
    sys.path.insert(0, str(BUNDLE))
