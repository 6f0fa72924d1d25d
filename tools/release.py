"""Release archives: package the bundle as ``<name>_v<version>.zip`` and verify a downloaded bundle's checksums.

Package (from the repository root, after training)::

    python -m tools.release package --out_dir dist \\
        --url_base https://github.com/<owner>/<repo>/releases/download/<name>-v<version>

writes ``<out_dir>/<name>_v<version>.zip`` (top folder ``<name>/``: ``configs/``, ``scripts/``, ``docs/``, ``LICENSE``,
``large_files.yml``, ``models/model.pt``, ``models/model.ts`` exported by ``ckpt_export``, and ``checksums.sha256``),
``<name>_v<version>.zip.sha256`` beside it, and records the release in the source bundle's ``large_files.yml``
(``version``, and the weights' URL under ``url_base`` with their md5) so that it can be committed with the release.
Upload the archive, ``models/model.pt`` and ``models/model.ts`` to ``url_base``.

Refusals (:class:`ReleaseError`, nothing written): no ``models/model.pt``, or one that does not load into
``network_def``; a ``version`` that is not the newest ``changelog`` entry (bump both first); a version already released
(not newer than the ``version`` recorded in ``large_files.yml``, or an archive of that name exists); any failing
model-zoo check (:mod:`tools.zoo_checks`) on the staged bundle; a staged file citing what the archive does not hold
(:func:`unresolved_citations`: a relative link, a cited bundle file or ``docs/method.md`` section, or a path of the
repository outside the bundle in its documents).

Verify a downloaded bundle (before loading it)::

    python -m tools.release verify <bundle_dir>/<name>
    cd <bundle_dir>/<name> && sha256sum -c checksums.sha256    # the same check without the repository
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch
import yaml
from monai.bundle import ConfigParser, ckpt_export

from scripts.files import atomic_path, write_text_atomic

from . import BUNDLE
from .zoo_checks import run_checks, version_key

__all__ = [
    "CHECKSUM_FILE",
    "ReleaseError",
    "ChecksumError",
    "sha256_file",
    "write_checksums",
    "verify_checksums",
    "read_large_files",
    "package",
    "unresolved_citations",
    "main",
]

logger = logging.getLogger(__name__)

CHECKSUM_FILE = "checksums.sha256"
LARGE_FILES = "large_files.yml"
WEIGHTS = ("models/model.pt", "models/model.ts")
CONTENT = ("configs", "scripts", "docs", "LICENSE")
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", ".*")


class ReleaseError(RuntimeError):
    """The bundle cannot be packaged; the message says what to fix."""


class ChecksumError(RuntimeError):
    """A bundle's files do not match its ``checksums.sha256``: corrupted, incomplete or modified."""


def sha256_file(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in 1 MiB chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_checksums(bundle_dir: str | os.PathLike) -> Path:
    """Write ``checksums.sha256`` (``sha256sum`` format, sorted POSIX paths) over every other file of the bundle."""
    root = Path(bundle_dir)
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name != CHECKSUM_FILE)
    lines = [f"{sha256_file(p)}  {p.relative_to(root).as_posix()}\n" for p in files]
    return write_text_atomic(root / CHECKSUM_FILE, "".join(lines))


def verify_checksums(bundle_dir: str | os.PathLike) -> int:
    """Check every file listed in ``<bundle_dir>/checksums.sha256``; return how many were checked.

    Raises :class:`ChecksumError` naming each missing or differing file, or if the checksum file itself is missing or
    malformed (a truncated or tampered download).
    """
    root = Path(bundle_dir).resolve()
    listing = root / CHECKSUM_FILE
    if not listing.is_file():
        raise ChecksumError(
            f"{listing} not found: {root} is not an extracted release archive, or the extraction was incomplete "
            "(delete the folder and download again)."
        )
    problems, count = [], 0
    for number, line in enumerate(listing.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        digest, sep, rel = line.partition("  ")
        path = (root / rel).resolve()
        if not sep or len(digest) != 64 or root not in path.parents:
            raise ChecksumError(f"{listing} line {number} is malformed: {line!r}")
        count += 1
        if not path.is_file():
            problems.append(f"{rel}: missing")
        elif (actual := sha256_file(path)) != digest:
            problems.append(f"{rel}: sha256 {actual}, expected {digest}")
    if problems:
        raise ChecksumError(
            f"checksum mismatch in {root} ({len(problems)} of {count} files): "
            + "; ".join(problems)
            + ". The download is corrupted or was modified: delete the folder and download the archive again."
        )
    return count


def read_large_files(bundle_root: str | os.PathLike) -> dict[str, Any]:
    """``large_files.yml`` as a dict (``{"version": ..., "large_files": [...]}``); empty if absent."""
    path = Path(bundle_root) / LARGE_FILES
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


def _write_large_files(path: Path, version: str, entries: list[dict[str, str]]) -> None:
    header = (
        "# Weights of the released bundle (never in git), for `python -m monai.bundle download_large_files`.\n"
        "# Written by `python -m tools.release package`; `version` is the last released bundle version.\n"
    )
    write_text_atomic(path, header + yaml.safe_dump({"version": version, "large_files": entries}, sort_keys=False))


_TEXT = (".md", ".py", ".json", ".yml", ".yaml", ".conf")
_LINK = re.compile(r"\]\(([^)\s]+)\)")
_CITED = re.compile(r"(?<![\w./<-])(([\w-]+)/(?:[\w-]+/)*[\w-]+\.(?:md|py|json|yml|yaml|conf))(?![\w/<>*])")
_SECTION = re.compile(r"docs/method\.md,? sections? (\d+(?:\.\d+)?(?:(?:,| and) \d+(?:\.\d+)?)*)")
_HEADING = re.compile(r"^#{2,4} (\d+(?:\.\d+)?) ", re.MULTILINE)
_REPOSITORY_ONLY = re.compile(
    r"(?<![\w.-])(?:\.\./|bundle/|tools/|bench/|apps/|tests/|docs/results|docs/evaluation\.md)"
)
"""Paths outside the bundle (relative to the repository root): a released document may not name them."""


def unresolved_citations(bundle_dir: str | os.PathLike) -> list[str]:
    """What the bundle's own files cite but the bundle does not hold, one ``"<file>: <problem>"`` each.

    Checked in every text file (``.md``, ``.py``, ``.json``, ``.yml``, ``.conf``): relative markdown links (to the
    linking file); cited files under a folder of the bundle (``docs/method.md``, ``configs/train.json``,
    ``scripts/...``; relative to the bundle root, to ``scripts/`` as ``docs/method.md`` names code, or to the citing
    file) and the sections of ``docs/method.md`` they cite; in the documents (``.md``), no path of the repository
    outside the bundle.
    """
    root = Path(bundle_dir)
    method = root / "docs" / "method.md"
    sections = set(_HEADING.findall(method.read_text())) if method.is_file() else set()
    problems = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in _TEXT):
        text, name = path.read_text(errors="replace"), path.relative_to(root).as_posix()
        targets = [(t.split("#")[0], path.parent) for t in _LINK.findall(text) if path.suffix == ".md"]
        targets = [(t, base) for t, base in targets if t and "://" not in t and not t.startswith("mailto:")]
        for target, base in targets:
            if not (base / target).exists():
                problems.append(f"{name}: link {target} not in the bundle")
        bases = (root, root / "scripts", path.parent)
        for cited, folder in set(_CITED.findall(text)):
            known = any((base / folder).is_dir() for base in bases)  # else a path elsewhere (the reference's code)
            if known and not any((base / cited).exists() for base in bases):
                problems.append(f"{name}: cites {cited}, not in the bundle")
        for group in _SECTION.findall(text):
            for number in re.split(r",| and", group):
                if number.strip() not in sections:
                    problems.append(f"{name}: cites docs/method.md section {number.strip()}, which it does not have")
        if path.suffix == ".md":
            problems += [f"{name}: names {m.group(0)!r} outside the bundle" for m in _REPOSITORY_ONLY.finditer(text)]
    return problems


def _check_version(meta: dict[str, Any], released: str | None) -> str:
    version, changelog = meta.get("version"), meta.get("changelog") or {}
    if not version or version not in changelog:
        raise ReleaseError(f"metadata version {version!r} has no changelog entry: add one to configs/metadata.json.")
    newest = max(changelog, key=version_key)
    if newest != version:
        raise ReleaseError(f"metadata version {version} is not the newest changelog entry ({newest}): bump version.")
    if released and version_key(version) <= version_key(released):
        raise ReleaseError(
            f"version {version} is already released (large_files.yml records {released}): bump the version in "
            "configs/metadata.json and add its changelog entry."
        )
    return version


def _check_weights(bundle_root: Path) -> None:
    weights = bundle_root / "models" / "model.pt"
    if not weights.is_file():
        raise ReleaseError(
            f"no trained weights at {weights}: train first (python -m monai.bundle run training --config_file "
            "configs/train.json) or copy a checkpoint there."
        )
    parser = ConfigParser()
    parser.read_config(str(bundle_root / "configs" / "inference.json"))
    parser["bundle_root"] = str(bundle_root)
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        parser.get_parsed_content("network_def").load_state_dict(state)
    except Exception as e:
        raise ReleaseError(f"{weights} does not load into network_def of configs/inference.json: {e}") from e


def _stage(bundle_root: Path, stage: Path) -> None:
    for item in CONTENT:
        source = bundle_root / item
        if source.is_dir():
            shutil.copytree(source, stage / item, ignore=_IGNORE)
        elif source.is_file():
            shutil.copy2(source, stage / item)
        else:
            raise ReleaseError(f"{source} is missing; a release needs {', '.join(CONTENT)}.")
    (stage / "models").mkdir()
    shutil.copy2(bundle_root / "models" / "model.pt", stage / "models" / "model.pt")
    ckpt_export(
        net_id="network_def",
        filepath=str(stage / "models" / "model.ts"),
        ckpt_file=str(stage / "models" / "model.pt"),
        meta_file=str(stage / "configs" / "metadata.json"),
        config_file=str(stage / "configs" / "inference.json"),
        bundle_root=str(stage),
    )


def _zip(stage: Path, target: Path, top: str) -> None:
    with atomic_path(target, overwrite=False) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for path in sorted(stage.rglob("*")):
            if path.is_file():
                z.write(path, f"{top}/{path.relative_to(stage).as_posix()}")


def package(
    bundle_root: str | os.PathLike,
    out_dir: str | os.PathLike,
    url_base: str,
    name: str = "coopseg",
    record: bool = True,
) -> Path:
    """Build and return ``<out_dir>/<name>_v<version>.zip``; see the module docstring for contents and refusals."""
    bundle_root, out_dir = Path(bundle_root).resolve(), Path(out_dir).resolve()
    if not url_base.startswith(("http://", "https://")):
        raise ReleaseError(f"url_base must be an http(s) URL where the weights will be published, got {url_base!r}.")
    meta = json.loads((bundle_root / "configs" / "metadata.json").read_text())
    version = _check_version(meta, read_large_files(bundle_root).get("version"))
    archive = out_dir / f"{name}_v{version}.zip"
    if archive.exists():
        raise ReleaseError(f"{archive} already exists: version {version} was already packaged; bump the version.")
    _check_weights(bundle_root)
    out_dir.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{name}_v{version}.", dir=out_dir))
    try:
        _stage(bundle_root, stage)
        entries = [
            {"path": w, "url": f"{url_base.rstrip('/')}/{Path(w).name}", "hash_val": sha256_file(stage / w, "md5"),
             "hash_type": "md5"}
            for w in WEIGHTS
        ]  # fmt: skip
        _write_large_files(stage / LARGE_FILES, version, entries)
        failed = [r for r in run_checks(stage) if not r.ok]
        if failed:
            raise ReleaseError("model-zoo checks failed: " + "; ".join(f"{r.name}: {r.detail}" for r in failed))
        unresolved = unresolved_citations(stage)
        if unresolved:
            raise ReleaseError("the bundle cites what it does not hold: " + "; ".join(unresolved))
        write_checksums(stage)
        _zip(stage, archive, name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    write_text_atomic(archive.with_name(archive.name + ".sha256"), f"{sha256_file(archive)}  {archive.name}\n")
    if record:
        _write_large_files(bundle_root / LARGE_FILES, version, entries)
    logger.info("packaged %s (%d bytes); upload it with models/model.pt and models/model.ts to %s",
                archive, archive.stat().st_size, url_base)  # fmt: skip
    return archive


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.release", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    pack = sub.add_parser("package", help="build <name>_v<version>.zip from a trained bundle")
    pack.add_argument("--bundle_root", default=str(BUNDLE), help="the bundle to package (default: the repository's)")
    pack.add_argument("--out_dir", required=True, help="where the archive is written")
    pack.add_argument("--url_base", required=True, help="http(s) URL under which model.pt and model.ts are published")
    pack.add_argument(
        "--name", default="coopseg", help="bundle name: archive <name>_v<version>.zip, top folder <name>/"
    )
    pack.add_argument("--no_record", action="store_true", help="do not update the source bundle's large_files.yml")
    check = sub.add_parser("verify", help="check an extracted bundle against its checksums.sha256")
    check.add_argument("bundle_dir")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.command == "package":
            archive = package(args.bundle_root, args.out_dir, args.url_base, args.name, record=not args.no_record)
            print(f"release archive: {archive}")
        else:
            count = verify_checksums(args.bundle_dir)
            print(f"{args.bundle_dir}: all {count} files match {CHECKSUM_FILE}")
    except (ReleaseError, ChecksumError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
