"""The app's MONAI Label server as a subprocess (``python -m monailabel.main start_server``), stopped by its PID.

Like the Slicer plugin's server it listens on 127.0.0.1 and a free port. ``--studies`` is a folder or a DICOMweb URL;
the caller's ``MONAI_LABEL_*`` variables and ``PYTHONPATH`` are dropped, so only ``env`` configures the server; the
working folder is ``cwd``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from .ports import free_port

APP_DIR = Path(__file__).resolve().parents[2] / "apps" / "coopseg_label"
LOOPBACK = ("-i", "127.0.0.1")


def copy_app(target: Path) -> Path:
    """A copy of the app at ``target`` without its runtime folders (models, logs)."""
    shutil.copytree(APP_DIR, target, ignore=shutil.ignore_patterns("model", "logs", "bin", "__pycache__"))
    return target


class LabelServer:
    """One server process; ``url`` answers once :meth:`wait_ready` returns, :meth:`stop` ends it and its children.

    Args:
        app: the app folder to serve.
        studies: ``--studies``: a folder or a DICOMweb URL.
        conf: ``--conf`` key/value pairs.
        cwd: working folder; the log is ``log`` or ``cwd/server_<port>.log``.
        env: extra environment variables.
        host_args: the bind-address arguments (``()`` leaves MONAI Label's default, which the app refuses).
        threads: ``OMP_NUM_THREADS`` for the server (None: the library default); 1 keeps tests on shared cores from
            oversubscribing them.
    """

    def __init__(
        self,
        app: Path,
        studies: str | Path,
        conf: dict[str, str],
        cwd: Path,
        env: dict[str, str] | None = None,
        log: Path | None = None,
        host_args: Sequence[str] = LOOPBACK,
        threads: int | None = 1,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = Path(log) if log is not None else Path(cwd) / f"server_{self.port}.log"
        args = [sys.executable, "-m", "monailabel.main", "start_server", "--app", str(app), "--studies", str(studies)]
        args += [*host_args, "-p", str(self.port)]
        for key, value in conf.items():
            args += ["--conf", key, value]
        clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("MONAI_LABEL_")}
        if threads is not None:
            clean["OMP_NUM_THREADS"] = str(threads)
        self._log = open(self.log, "w")
        self.process = subprocess.Popen(
            args,
            cwd=str(cwd),
            env={**clean, **(env or {})},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            # its own process group, for stop(); not its own session, which on Linux would also put it in a
            # scheduler autogroup of its own, where `nice` of other work no longer applies
            process_group=0,
        )

    def log_tail(self, n: int = 80) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])

    def wait_ready(self, timeout: float = 300) -> LabelServer:
        """Poll ``/info/`` until it answers 200; a clear error with the log's tail if the server exits or hangs."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/info/", timeout=10).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"server not ready after {timeout} s:\n{self.log_tail()}")

    def wait_idle(self, task: str = "scoring", timeout: float = 600) -> LabelServer:
        """Wait until no background ``task`` (``scoring``, ``train``, ``activelearning``...) runs, e.g. the scoring
        the app starts with, so that timings do not include it."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log_tail()}")
            if httpx.get(f"{self.url}/{task}/", params={"check_if_running": True}, timeout=30).status_code == 404:
                return self
            time.sleep(1.0)
        raise TimeoutError(f"background {task} still running after {timeout} s:\n{self.log_tail()}")

    def wait_exit(self, timeout: float = 300) -> int:
        """The exit status of a server expected to stop by itself."""
        try:
            return self.process.wait(timeout=timeout)
        finally:
            self.stop()

    def alive(self) -> bool:
        return self.process.poll() is None and httpx.get(f"{self.url}/info/", timeout=30).status_code == 200

    def stop(self) -> None:
        """SIGTERM to the server's process group (the server and any training subprocess), SIGKILL after 30 s."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)
        self._log.close()
