"""Connecting to a PACS over DICOMweb with MONAI Label's settings, checked once when the server starts.

``--studies http(s)://...`` names the DICOMweb root (Orthanc: ``http://<host>:8042/dicom-web``). The options are
MONAI Label's own environment variables (or ``.env``):

* ``MONAI_LABEL_DATASTORE_USERNAME`` / ``MONAI_LABEL_DATASTORE_PASSWORD``: HTTP basic credentials (the deprecated
  ``MONAI_LABEL_DICOMWEB_USERNAME`` / ``_PASSWORD`` are read when these are empty);
* ``MONAI_LABEL_DICOMWEB_SEARCH_FILTER``: the QIDO-RS series filter of the worklist. MONAI Label's default is
  ``{"Modality": "CT"}``, which would list no cardiac MR series, so unless the user sets it this app uses
  ``{"Modality": "MR"}`` (and exports the value it uses, so MONAI Label's training subprocess sees the same list);
* ``MONAI_LABEL_DATASTORE_CACHE_PATH`` (or ``MONAI_LABEL_DICOMWEB_CACHE_PATH``): where series are cached
  (MONAI Label's default ``~/.cache/monailabel/dicom/<hash of the URL>``);
* ``MONAI_LABEL_QIDO_PREFIX``, ``MONAI_LABEL_WADO_PREFIX``, ``MONAI_LABEL_STOW_PREFIX``: path prefixes of the three
  services, for servers that need them.

:func:`connect` asks the server for one series before anything else happens: an address that does not answer, a
401 (missing or wrong credentials), a 403 or a URL that is no DICOMweb root raise :class:`PacsConnectionError`
naming the URL and the problem, so the server stops instead of serving an empty or local worklist.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Any

import requests
from monailabel.config import settings
from monailabel.datastore.dicom import DICOMwebClientX

from ..errors import sentence

logger = logging.getLogger(__name__)

MR_FILTER: dict[str, Any] = {"Modality": "MR"}
FILTER_VARIABLE = "MONAI_LABEL_DICOMWEB_SEARCH_FILTER"
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 300.0
_CREDENTIALS = "MONAI_LABEL_DATASTORE_USERNAME and MONAI_LABEL_DATASTORE_PASSWORD"


class PacsConnectionError(RuntimeError):
    """The DICOMweb server cannot be used; the message says the problem first, then the URL and the fix."""


def is_url(studies: str) -> bool:
    """Whether ``--studies`` names a remote datastore (MONAI Label's own test: an ``http(s)://`` prefix)."""
    return studies.startswith(("http://", "https://"))


@dataclass(frozen=True)
class PacsSettings:
    """Where the PACS is and how to use it (see the module docstring for the variables each field comes from)."""

    url: str
    username: str = ""
    password: str = field(default="", repr=False)
    search_filter: dict[str, Any] = field(default_factory=lambda: dict(MR_FILTER))
    cache_path: str | None = None
    qido_prefix: str | None = None
    wado_prefix: str | None = None
    stow_prefix: str | None = None


def search_filter() -> dict[str, Any]:
    """The user's ``MONAI_LABEL_DICOMWEB_SEARCH_FILTER`` (environment or ``.env``), else ``{"Modality": "MR"}``."""
    if FILTER_VARIABLE in settings.model_fields_set:
        return dict(settings.MONAI_LABEL_DICOMWEB_SEARCH_FILTER)
    return dict(MR_FILTER)


def pacs_settings(url: str) -> PacsSettings:
    """The :class:`PacsSettings` of ``url`` from MONAI Label's settings; exports the search filter it resolves."""
    resolved = search_filter()
    os.environ[FILTER_VARIABLE] = json.dumps(resolved)  # MONAI Label's training subprocess inherits this
    cache = (settings.MONAI_LABEL_DATASTORE_CACHE_PATH or settings.MONAI_LABEL_DICOMWEB_CACHE_PATH or "").strip()
    return PacsSettings(
        url=url.strip().rstrip("/"),
        username=settings.MONAI_LABEL_DATASTORE_USERNAME or settings.MONAI_LABEL_DICOMWEB_USERNAME,
        password=settings.MONAI_LABEL_DATASTORE_PASSWORD or settings.MONAI_LABEL_DICOMWEB_PASSWORD,
        search_filter=resolved,
        cache_path=cache or None,
        qido_prefix=settings.MONAI_LABEL_QIDO_PREFIX,
        wado_prefix=settings.MONAI_LABEL_WADO_PREFIX,
        stow_prefix=settings.MONAI_LABEL_STOW_PREFIX,
    )


class _TimeoutSession(requests.Session):
    """A session whose requests time out (connect, read) unless told otherwise: a silent host must not hang."""

    def __init__(self, timeout: tuple[float, float]) -> None:
        super().__init__()
        self.default_timeout = timeout

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", self.default_timeout)
        return super().request(method, url, *args, **kwargs)


ROOT_HINT = "give --studies the DICOMweb root (Orthanc: http://<host>:8042/dicom-web)"
NOT_A_ROOT = (400, 404, 405)  # what a URL that is no DICOMweb root answers a QIDO-RS search (Orthanc's REST root: 400)


def _http_problem(pacs: PacsSettings, response: requests.Response) -> str:
    """The refusal for an HTTP error answer to the first search: cause first, the URL, the fix."""
    status, url = response.status_code, pacs.url
    if status == 401:
        if pacs.username:
            return sentence(
                f"credentials refused (401 Unauthorized) by the DICOMweb server {url}", fix=f"check {_CREDENTIALS}"
            )
        return sentence(
            f"credentials needed (401 Unauthorized) by the DICOMweb server {url}", fix=f"set {_CREDENTIALS}"
        )
    if status == 403:
        return sentence(f"forbidden (403): user {pacs.username or '(none)'} may not search series on {url}")
    if status in NOT_A_ROOT:
        return sentence(f"not a DICOMweb root (HTTP {status} to a QIDO-RS series search): {url}", fix=ROOT_HINT)
    return sentence(f"HTTP {status} {response.reason} to a QIDO-RS series search from the DICOMweb server {url}")


def probe(client: DICOMwebClientX, pacs: PacsSettings) -> int:
    """Search one series with the worklist filter; the number found (0 or 1). Raises :class:`PacsConnectionError`."""
    try:
        found = client.search_for_series(search_filters=pacs.search_filter, limit=1)
    except requests.exceptions.HTTPError as e:
        raise PacsConnectionError(_http_problem(pacs, e.response)) from e
    except requests.exceptions.Timeout as e:
        raise PacsConnectionError(
            sentence(
                f"no answer within {CONNECT_TIMEOUT_S:g} s from the DICOMweb server {pacs.url}", fix="check it runs"
            )
        ) from e
    except requests.exceptions.ConnectionError as e:
        cause = e.args[0] if e.args else e
        text = str(getattr(cause, "reason", cause))
        errno = re.search(r"\[Errno -?\d+\][^,)'\"]*", text)  # "[Errno 111] Connection refused"
        reason = (errno.group(0) if errno else text.split(": ")[-1]).strip()[:60]
        raise PacsConnectionError(
            sentence(
                f"cannot reach the DICOMweb server {pacs.url} ({reason})",
                fix="check the host and port given to --studies and that the server runs",
            )
        ) from e
    except ValueError as e:  # an answer that is not JSON
        raise PacsConnectionError(_no_dicom_json(pacs)) from e
    if not isinstance(found, list) or not all(isinstance(item, dict) for item in found):  # e.g. Orthanc's REST list
        raise PacsConnectionError(_no_dicom_json(pacs))
    return len(found)


def _no_dicom_json(pacs: PacsSettings) -> str:
    return sentence(f"not a DICOMweb root (a QIDO-RS series search answered no DICOM JSON): {pacs.url}", fix=ROOT_HINT)


def share_with_proxy(pacs: PacsSettings) -> None:
    """Give MONAI Label's DICOMweb proxy (``/proxy/dicom/...``, through which OHIF reads the PACS) the datastore's
    credentials: it reads only the deprecated ``MONAI_LABEL_DICOMWEB_USERNAME`` / ``_PASSWORD`` settings, at each
    request, so the proxy authenticates as the datastore does whichever variables the user set."""
    settings.MONAI_LABEL_DICOMWEB_USERNAME = pacs.username
    settings.MONAI_LABEL_DICOMWEB_PASSWORD = pacs.password


def connect(pacs: PacsSettings) -> DICOMwebClientX:
    """A DICOMweb client of ``pacs`` (MONAI Label's ``DICOMwebClientX``) that has answered one search."""
    session = _TimeoutSession((CONNECT_TIMEOUT_S, READ_TIMEOUT_S))
    if pacs.username:
        session.auth = (pacs.username, pacs.password)
    client = DICOMwebClientX(
        url=pacs.url,
        session=session,
        qido_url_prefix=pacs.qido_prefix,
        wado_url_prefix=pacs.wado_prefix,
        stow_url_prefix=pacs.stow_prefix,
    )
    client.set_http_retry_params(retry=False)  # the first contact fails fast (retries would back off 30 s)
    found = probe(client, pacs)
    client.set_http_retry_params()  # then dicomweb-client's retries with back-off
    logger.info(
        "PACS %s: connected%s; worklist filter %s (%s)",
        pacs.url,
        f" as {pacs.username}" if pacs.username else "",
        json.dumps(pacs.search_filter),
        "at least one series" if found else "NO SERIES MATCH IT",
    )
    return client
