"""The shape of the app's refusals: the cause first, one sentence of at most about 200 characters, what it is about
(a series) named once, the fix where there is one, and no server path."""

from __future__ import annotations

import json
import re

MAX_CHARS = 200
_SERVER_PATH = re.compile(r"(?<![\w:/.\-])/(?:tmp|root|home|var|work|usr|opt)/")


def check_refusal(message: str, cause: str, named: str | None = None, fix: str | None = None) -> None:
    """Assert that ``message`` starts with ``cause`` (case aside), names ``named`` exactly once, holds ``fix`` after
    the cause, is one sentence of at most :data:`MAX_CHARS` characters and shows no server path."""
    assert len(message) <= MAX_CHARS, f"{len(message)} characters: {message}"
    assert message.lower().startswith(cause.lower()), f"cause not first: {message}"
    assert message.endswith(".") and ". " not in message, f"not one sentence: {message}"
    if named is not None:
        assert message.count(named) == 1, f"{named} named {message.count(named)} times: {message}"
    if fix is not None:
        assert fix in message[len(cause) :], f"no fix '{fix}': {message}"
    assert not _SERVER_PATH.search(message), f"a server path: {message}"


def detail_of(client_message: str) -> str:
    """The ``detail`` of an HTTP error as MONAI Label's client reports it (``"... Response: {json}"``)."""
    found = re.search(r"\{.*\}", client_message, re.S)
    assert found, client_message
    return json.loads(found.group(0))["detail"]
