"""Refusals that say their cause first (MONAI Label's endpoints turn other exceptions into a bare 500).

A refusal is one sentence: the cause, then what it is about (a series named once), then the fix where there is one,
under about 200 characters. Server paths stay in the server log: :func:`without_paths` replaces them in anything
sent to a client, and :func:`http_error` logs the full story.
"""

from __future__ import annotations

import logging
import re

from fastapi import HTTPException

logger = logging.getLogger(__name__)

_PATH = re.compile(r"(?<![\w:/.\-])/(?:[\w.\-+@~]+/)*[\w.\-+@~]+")  # absolute POSIX paths, not URLs
_CLAUSE = "; "  # the bundle's messages: "<name>: <problem>; <what is expected, details>." (those go to the log)


def without_paths(text: str) -> str:
    """``text`` with absolute file system paths replaced by ``<server path>``."""
    return _PATH.sub("<server path>", text)


def sentence(cause: str, about: str = "", fix: str = "") -> str:
    """``"<Cause>[ <about>][; <fix>]."``: the cause capitalised and first."""
    text = cause.strip().rstrip(".")
    text = text[:1].upper() + text[1:]
    if about:
        text += f" {about}"
    if fix:
        text += f"; {fix.rstrip('.')}"
    return text + "."


def problem_of(error: Exception, name: str = "") -> str:
    """The cause alone of an error of the bundle's: its ``problem`` attribute, else the first clause of its message
    without the leading ``"<name>: "`` (the rest, expectations and details, stays in the log); no server paths."""
    problem = getattr(error, "problem", None)
    if problem is None:
        problem = str(error)
        head, sep, rest = problem.partition(": ")
        if name and sep and head.startswith(name):
            extra = head[len(name) :].strip()  # e.g. "frame 2" of a cine's label
            problem = f"{rest.split(_CLAUSE)[0].rstrip('.')}{f' ({extra})' if extra else ''}"
        problem = problem.split(_CLAUSE)[0]
    problem = problem.removeprefix("is ")  # "<name>: is a 2D image ..." reads "A 2D image ... in <name>"
    return without_paths(problem).rstrip(".")


def http_error(status: int, message: str, detail: str = "") -> HTTPException:
    """An ``HTTPException`` whose JSON ``detail`` is ``message``; logged as a warning with ``detail`` (which may name
    server paths: it stays in the log)."""
    logger.warning("HTTP %d: %s%s", status, message, f" ({detail})" if detail else "")
    return HTTPException(status_code=status, detail=message)
