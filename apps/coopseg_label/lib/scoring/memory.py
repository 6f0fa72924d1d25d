"""Images that scoring could not use, remembered across scoring passes (each pass is a subprocess in server mode).

An entry keeps the reason and the image's version (a PACS series' instance count, a local file's size and time): the
image is tried again only once its version differs, so an unusable series is retrieved from the PACS once, not at
every pass.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)


class FailureMemory:
    """``{image id: {"version": ..., "reason": ...}}`` in the JSON file ``path`` (None: kept in memory only)."""

    def __init__(self, path: Path | None) -> None:
        self.path = Path(path) if path is not None else None
        self.entries: dict[str, dict[str, str]] = {}
        if self.path is not None and self.path.is_file():
            try:
                self.entries = json.loads(self.path.read_text())
            except (OSError, ValueError) as e:  # a damaged file only costs a retry
                logger.warning("scoring: ignoring unreadable %s (%s)", self.path.name, e)

    def reason(self, image_id: str, version: str) -> str | None:
        """Why ``image_id`` failed, if it failed at this ``version``."""
        entry = self.entries.get(image_id)
        return entry["reason"] if entry and entry.get("version") == version else None

    def remember(self, image_id: str, version: str, reason: str) -> None:
        self.entries[image_id] = {"version": version, "reason": reason}

    def forget(self, image_id: str) -> None:
        self.entries.pop(image_id, None)

    def save(self) -> None:
        """Write the file atomically (a reader never sees half of it)."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=self.path.parent, suffix=".tmp", delete=False) as f:
            json.dump(self.entries, f, indent=1, sort_keys=True)
        os.replace(f.name, self.path)
