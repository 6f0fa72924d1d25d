"""A real PACS for tests and benchmarks: Orthanc with its DICOMweb plugin, on a free port of 127.0.0.1, in a
temporary folder.

Orthanc (``orthanc`` and ``orthanc-dicomweb`` from Debian; CI installs them) runs as a subprocess with its own JSON
configuration: HTTP only on the loopback interface, no DICOM port, storage and index in the folder, DICOMweb at
``/dicom-web/``, optionally HTTP basic authentication. It is ready once ``GET /system`` answers, and is stopped by its
PID (terminate, then kill). Series are loaded by POSTing each file to the REST ``/instances`` endpoint. With
``log_http`` Orthanc logs every HTTP request it serves (``--verbose-http``), which :meth:`Orthanc.requests` reads back:
what a client asked of the PACS, counted by the PACS itself.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx

from .ports import free_port

logger = logging.getLogger(__name__)

BINARIES = ("Orthanc", "/usr/sbin/Orthanc")
DICOMWEB_PLUGINS = (
    "/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
    "/usr/lib/orthanc/plugins/libOrthancDicomWeb.so",
    "/usr/local/share/orthanc/plugins/libOrthancDicomWeb.so",
)
INSTALL = "install it with: apt-get install orthanc orthanc-dicomweb (.ci/run does)"


def orthanc_binary() -> str:
    """The Orthanc executable; a clear error when it is not installed (the tests need it, they never skip)."""
    for name in BINARIES:
        found = shutil.which(name)
        if found:
            return found
    raise FileNotFoundError(f"Orthanc is not installed (looked for {', '.join(BINARIES)}); {INSTALL}.")


def dicomweb_plugin() -> str:
    for path in DICOMWEB_PLUGINS:
        if Path(path).is_file():
            return path
    raise FileNotFoundError(f"Orthanc's DICOMweb plugin is not installed ({', '.join(DICOMWEB_PLUGINS)}); {INSTALL}.")


class Orthanc:
    """One Orthanc server in ``root``; ``users`` (name -> password) turns authentication on.

    Attributes:
        url: the REST root, ``http://127.0.0.1:<port>``.
        dicomweb: the DICOMweb root, ``<url>/dicom-web``.
    """

    def __init__(self, root: Path, users: dict[str, str] | None = None, log_http: bool = False) -> None:
        self.root = Path(root)
        self.users = dict(users or {})
        self.log_http = log_http
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.dicomweb = f"{self.url}/dicom-web"
        self.process: subprocess.Popen | None = None
        self._log = None

    @property
    def auth(self) -> tuple[str, str] | None:
        """Credentials of the first registered user (None without authentication)."""
        return next(iter(self.users.items())) if self.users else None

    def config(self) -> dict:
        storage = self.root / "storage"
        return {
            "Name": f"coopseg-test-{self.port}",
            "HttpPort": self.port,
            "DicomServerEnabled": False,
            "RemoteAccessAllowed": False,
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "AuthenticationEnabled": bool(self.users),
            "RegisteredUsers": self.users,
            "Plugins": [dicomweb_plugin()],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }

    def start(self, timeout: float = 60.0) -> Orthanc:
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "orthanc.json"
        config.write_text(json.dumps(self.config(), indent=1))
        self._log = open(self.root / "orthanc.log", "w")
        self.process = subprocess.Popen(
            [orthanc_binary(), *(["--verbose-http"] if self.log_http else []), str(config)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=str(self.root),
        )
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/system", auth=self.auth, timeout=5).status_code == 200:
                    logger.info("Orthanc on %s (pid %d)", self.url, self.process.pid)
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"Orthanc did not answer GET /system within {timeout} s:\n{self.log_tail()}")

    def log_tail(self, n: int = 40) -> str:
        path = self.root / "orthanc.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.is_file() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=20)
        if self._log is not None:
            self._log.close()
            self._log = None

    def requests(self) -> list[tuple[str, str]]:
        """``(method, path)`` of every HTTP request served so far, oldest first (needs ``log_http``; query strings
        are not logged)."""
        if not self.log_http:
            raise RuntimeError("Orthanc was started without log_http")
        text = (self.root / "orthanc.log").read_text(errors="replace")
        return re.findall(r"\(http\) (GET|POST|PUT|DELETE) (\S+)", text)

    def series_retrievals(self, since: int = 0) -> dict[str, int]:
        """WADO-RS retrievals per series UID among the requests after the first ``since``: GETs of
        ``/dicom-web/studies/<study>/series/<series>`` and of anything under it (metadata, instances, frames)."""
        counts: dict[str, int] = {}
        for method, path in self.requests()[since:]:
            found = re.match(r"/dicom-web/studies/[^/]+/series/([^/?]+)", path)
            if method == "GET" and found:
                counts[found.group(1)] = counts.get(found.group(1), 0) + 1
        return counts

    # REST helpers ----------------------------------------------------------------------------------------------
    def get(self, path: str, **kwargs) -> httpx.Response:
        response = httpx.get(f"{self.url}{path}", auth=self.auth, timeout=60, **kwargs)
        response.raise_for_status()
        return response

    def upload(self, files: list[Path]) -> list[str]:
        """POST each DICOM file to ``/instances``; the Orthanc IDs of the instances."""
        ids = []
        with httpx.Client(auth=self.auth, timeout=60) as client:
            for path in files:
                response = client.post(f"{self.url}/instances", content=Path(path).read_bytes())
                response.raise_for_status()
                ids.append(response.json()["ID"])
        return ids

    def upload_folder(self, folder: Path) -> list[str]:
        return self.upload(sorted(p for p in Path(folder).iterdir() if p.suffix == ".dcm"))

    def series_uids(self, modality: str) -> list[str]:
        """SeriesInstanceUIDs of the stored series of one modality (QIDO-RS)."""
        found = self.get("/dicom-web/series", params={"Modality": modality}).json()
        return [item["0020000E"]["Value"][0] for item in found]

    def instance_files(self, series_uid: str) -> list[bytes]:
        """The stored DICOM files of one series (REST ``/tools/lookup``, ``/series/<id>/instances``)."""
        series = [m for m in self.lookup(series_uid) if m["Type"] == "Series"]
        if not series:
            return []
        instances = self.get(f"/series/{series[0]['ID']}/instances").json()
        return [self.get(f"/instances/{item['ID']}/file").content for item in instances]

    def lookup(self, uid: str) -> list[dict]:
        response = httpx.post(f"{self.url}/tools/lookup", content=uid, auth=self.auth, timeout=60)
        response.raise_for_status()
        return response.json()
