"""Writing files and folders so that a crash never leaves a half-written one, and nothing is overwritten by accident.

Every output of the bundle goes through here: a file is written to a hidden temporary sibling and renamed into place
(``os.replace`` is atomic on one file system); a folder is built in a hidden staging sibling and renamed into place
when complete. A reader therefore sees the old file, the new file or no file, never a partial one.
"""

from __future__ import annotations

import csv
import filecmp
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_path",
    "copy_file_atomic",
    "staged_dir",
    "write_csv_atomic",
    "write_json_atomic",
    "write_text_atomic",
]

SameContent = Callable[[Path, Path], bool]


def _suffix(path: Path) -> str:
    """Every suffix of the name (``.nii.gz``), so writers that choose the format by extension still do."""
    return "".join(path.suffixes) if path.suffixes else ""


@contextmanager
def atomic_path(
    path: str | os.PathLike, overwrite: bool = True, same: SameContent | None = None
) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; when the block succeeds it is renamed to ``path``.

    Args:
        path: the final file.
        overwrite: replace an existing ``path``. If False, an existing file is kept and ``FileExistsError`` raised
            (before anything is written, unless ``same`` is given).
        same: with ``overwrite=False``, ``same(new, existing)`` decides whether an existing file already holds what
            was written; it is then kept silently instead of raising.

    The temporary file is removed if the block raises; the directory is created if needed.
    """
    path = Path(path)
    if path.exists() and not overwrite and same is None:
        raise FileExistsError(f"{path} exists and is kept; write to another path or allow overwriting.")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{_suffix(path)}", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    os.chmod(tmp, 0o644)  # mkstemp creates 0600 files
    try:
        yield tmp
        if path.exists() and not overwrite:
            if same is not None and same(tmp, path):
                return
            raise FileExistsError(
                f"{path} already exists with different content and is kept; remove it or write elsewhere."
            )
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path: str | os.PathLike, text: str, overwrite: bool = True) -> Path:
    """``text`` written to ``path`` atomically."""
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json_atomic(path: str | os.PathLike, content: Any, indent: int | None = 1) -> Path:
    """``content`` as JSON (and a final newline), atomically; an existing file is replaced."""
    return write_text_atomic(path, json.dumps(content, indent=indent) + "\n")


def write_csv_atomic(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> Path:
    """``rows`` as CSV with the header ``columns`` (missing values empty, floats as ``%.6g``), atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return Path(path)


def copy_file_atomic(source: str | os.PathLike, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Byte copy of ``source`` to ``path``; an existing different ``path`` is an error unless ``overwrite``."""
    same = None if overwrite else (lambda new, old: filecmp.cmp(new, old, shallow=False))
    with atomic_path(path, overwrite=overwrite, same=same) as tmp:
        shutil.copyfile(source, tmp)
    return Path(path)


@contextmanager
def staged_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty hidden staging folder next to ``target``; on success it is renamed to ``target``.

    If ``target`` appeared meanwhile (another process finished the same work first), the staging folder is discarded
    and the existing ``target`` kept. On failure the staging folder is removed.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield staging
        try:
            os.rename(staging, target)
        except OSError:
            if not target.is_dir():
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
