"""A PACS as the app's datastore, over DICOMweb (``--studies http(s)://<DICOMweb root>``)."""

from __future__ import annotations

from pathlib import Path

from .connection import PacsConnectionError, PacsSettings, connect, is_url, pacs_settings, share_with_proxy
from .datastore import PacsDatastore

__all__ = ["PacsConnectionError", "PacsDatastore", "PacsSettings", "is_url", "open_pacs", "pacs_settings"]


def open_pacs(url: str, bundle: Path) -> PacsDatastore:
    """Connect to the DICOMweb server at ``url`` (:func:`connect` raises :class:`PacsConnectionError` naming the URL
    and the problem) and serve it as the datastore; only then is the local cache folder created. MONAI Label's DICOMweb
    proxy, which OHIF uses, then signs in with the same credentials."""
    pacs = pacs_settings(url)
    client = connect(pacs)
    share_with_proxy(pacs)
    return PacsDatastore(client, pacs, bundle)
