"""Figures of the bundle's reports: matplotlib without a display, and PNGs written atomically.

Every plot (the evaluation's box plots, Bland-Altman panels and quality-flag scatter, the inference workflow's
volume-time curves) takes pyplot from :func:`pyplot`, the one place that chooses matplotlib's backend (``Agg``:
figures go to files, never to a window), and is written by :func:`save_figure`. matplotlib is imported on first use
only: it takes seconds to import, and runs that draw no figure do not need it.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType
from typing import Any

from .files import atomic_path

__all__ = ["pyplot", "save_figure"]


def pyplot() -> ModuleType:
    """``matplotlib.pyplot`` on the non-interactive ``Agg`` backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | os.PathLike) -> Path:
    """Lay out ``fig``, write it as a PNG at ``path`` atomically (parents created), close it and return the path."""
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    pyplot().close(fig)
    return Path(path)
