"""HTTP errors that name the problem (MONAI Label's endpoints turn other exceptions into a bare 500)."""

from __future__ import annotations

import logging

from fastapi import HTTPException

logger = logging.getLogger(__name__)


def http_error(status: int, message: str) -> HTTPException:
    """An ``HTTPException`` whose JSON ``detail`` is ``message``; logged as a warning."""
    logger.warning("HTTP %d: %s", status, message)
    return HTTPException(status_code=status, detail=message)
