"""Keep the server on the loopback interface unless the user asks otherwise.

MONAI Label's ``start_server`` binds to ``0.0.0.0`` (every interface) when ``-i/--host`` is not given. The app
refuses that default: it starts only with an explicit host, and warns loudly when that host is reachable from the
network while MONAI Label's authentication is off.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence

logger = logging.getLogger(__name__)


def explicit_host(argv: Sequence[str]) -> str | None:
    """The ``-i``/``--host`` value of a ``start_server`` command line, or None if not given."""
    for i, arg in enumerate(argv):
        if arg in ("-i", "--host") and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--host="):
            return arg.split("=", 1)[1]
    return None


def check_bind_host(argv: Sequence[str], auth_enabled: bool) -> None:
    """Raise ``RuntimeError`` if ``start_server`` runs on MONAI Label's all-interfaces default; warn on exposure.

    Other processes (the training subprocess, tests creating the app in-process) are not checked.
    """
    if "start_server" not in argv:
        return
    host = explicit_host(argv)
    if host is None:
        raise RuntimeError(
            "refusing MONAI Label's default host 0.0.0.0 (every network interface): start with -i 127.0.0.1 "
            "(this machine only), or pass another address with -i after enabling authentication "
            "(MONAI_LABEL_AUTH_ENABLE=true; see the README section 'Segment in 3D Slicer')."
        )
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback and not auth_enabled:
        logger.warning(
            "THE SERVER IS REACHABLE FROM THE NETWORK ON %s WITHOUT AUTHENTICATION: anyone who can reach it can read "
            "and overwrite images and labels. Set MONAI_LABEL_AUTH_ENABLE=true (README) or use -i 127.0.0.1.",
            host,
        )
