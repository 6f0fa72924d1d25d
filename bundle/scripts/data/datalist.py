"""Resolving the training and validation datalists: a real dataset (``dataset_dir`` + MONAI-style JSON datalist) or,
with no dataset configured, the embedded synthetic phantom, generated once and cached outside git.

A datalist JSON holds ``{"training": [{"image": ..., "label": ...}, ...], "validation": [...], "test": [...]}``
with paths relative to ``dataset_dir`` (or absolute). Images are 3D short-axis volumes with the slices on the last
axis; labels use 0 background, 1 LV, 2 MYO, 3 RV.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from monai.data import load_decathlon_datalist

from ..files import staged_dir, write_json_atomic
from ..labels import channel_names
from .errors import DatasetError
from .phantom import write_phantom_dataset

__all__ = [
    "PHANTOM_VERSION",
    "default_cache_dir",
    "ensure_synthetic_dataset",
    "load_datalist",
    "resolve_datalists",
]

logger = logging.getLogger(__name__)

PHANTOM_VERSION = "phantom-v1"
SYNTHETIC_SPLIT = {"training": 10, "validation": 5, "test": 20}


def default_cache_dir() -> Path:
    """``$COOPSEG_CACHE_DIR`` or ``~/.cache/coopseg``: where generated data lives, never inside the git checkout."""
    return Path(os.environ.get("COOPSEG_CACHE_DIR") or Path.home() / ".cache" / "coopseg")


def ensure_synthetic_dataset(
    cache_dir: str | os.PathLike | None = None, seed: int = 0, split: dict[str, int] | None = None
) -> Path:
    """Generate the synthetic phantom dataset once (seeded) and return its directory, which holds ``datalist.json``.

    The dataset is written to a temporary sibling directory and renamed into place, so an interrupted run never
    leaves a half-written cache behind.
    """
    split = dict(SYNTHETIC_SPLIT if split is None else split)
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    name = f"{PHANTOM_VERSION}_seed{seed}_" + "_".join(f"{k}{v}" for k, v in split.items())
    target = root / name
    if (target / "datalist.json").is_file():
        logger.warning("SYNTHETIC DATA: using the cached phantom dataset in %s (no dataset_dir given).", target)
        return target
    logger.warning("SYNTHETIC DATA: no dataset_dir given; generating the phantom dataset into %s ...", target)
    with staged_dir(target) as staging:
        datalist: dict[str, Any] = {"name": "CoopSeg synthetic short-axis cine phantom", "version": PHANTOM_VERSION,
                                    "seed": seed, "labels": channel_names()}
        for offset, (key, n_subjects) in enumerate(split.items()):
            # Each split has its own seed stream, so the splits never share subjects.
            datalist[key] = [
                {**entry, "image": f"{key}/{entry['image']}", "label": f"{key}/{entry['label']}"}
                for entry in write_phantom_dataset(staging / key, n_subjects, seed=seed * 1000 + offset,
                                                   prefix=f"{key[:2]}")
            ]
        write_json_atomic(staging / "datalist.json", datalist)
    logger.warning("SYNTHETIC DATA: phantom dataset ready in %s.", target)
    return target


def _check_entries(entries: list[dict], key: str, datalist_file: Path) -> list[dict]:
    for i, entry in enumerate(entries):
        for field in ("image", "label"):
            path = entry.get(field)
            if path is None:
                raise DatasetError(f"{datalist_file}: entry {i} of '{key}' has no '{field}' (expected image, label).")
            if not Path(path).is_file():
                raise DatasetError(f"{datalist_file}: entry {i} of '{key}' points at a missing {field} file: {path}")
    return entries


def load_datalist(datalist_file: str | os.PathLike, key: str, base_dir: str | os.PathLike) -> list[dict]:
    """Entries under ``key`` with absolute paths; raises :class:`DatasetError` naming any missing file."""
    datalist_file = Path(datalist_file)
    try:
        content = json.loads(datalist_file.read_text())
    except json.JSONDecodeError as e:
        raise DatasetError(f"datalist {datalist_file} is not valid JSON: {e}") from e
    if not isinstance(content.get(key), list) or not content[key]:
        raise DatasetError(f"datalist {datalist_file} has no non-empty '{key}' list of {{image, label}} entries.")
    entries = load_decathlon_datalist(datalist_file, is_segmentation=True, data_list_key=key, base_dir=base_dir)
    return _check_entries(entries, key, datalist_file)


def resolve_datalists(
    dataset_dir: str | None = None,
    datalist_file: str | None = None,
    synthetic_cache_dir: str | None = None,
    synthetic_seed: int = 0,
    synthetic_split: dict[str, int] | None = None,
    validation_fraction: float = 0.2,
) -> dict[str, list[dict]]:
    """``{"training": [...], "validation": [...]}`` with absolute paths.

    Args:
        dataset_dir: root of a real dataset; empty or None selects the synthetic phantom.
        datalist_file: the JSON datalist (default ``<dataset_dir>/datalist.json``).
        synthetic_cache_dir: where the phantom is cached (default :func:`default_cache_dir`).
        synthetic_seed: the phantom's seed.
        synthetic_split: subjects per phantom split (default ``SYNTHETIC_SPLIT``: 10 training, 5 validation, 20 test).
        validation_fraction: if the datalist has no ``validation`` list, this fraction of the training entries
            (the last ones, deterministic) validates.
    """
    if not dataset_dir:
        dataset_dir = str(ensure_synthetic_dataset(synthetic_cache_dir, synthetic_seed, synthetic_split))
        datalist_file = None
    root = Path(dataset_dir)
    if not root.is_dir():
        raise DatasetError(f"dataset_dir {root} does not exist or is not a directory.")
    if not any(root.iterdir()):
        raise DatasetError(f"dataset_dir {root} is empty; expected 3D NIfTI volumes and a datalist.json.")
    datalist_path = Path(datalist_file) if datalist_file else root / "datalist.json"
    if not datalist_path.is_file():
        raise DatasetError(
            f"no datalist at {datalist_path}; expected a JSON file with 'training' (and 'validation') lists of "
            '{"image": ..., "label": ...} paths relative to dataset_dir (pass --datalist <file> to use another).'
        )
    training = load_datalist(datalist_path, "training", root)
    content = json.loads(datalist_path.read_text())
    if content.get("validation"):
        validation = load_datalist(datalist_path, "validation", root)
    else:
        n_val = max(1, int(round(len(training) * validation_fraction)))
        if n_val >= len(training):
            raise DatasetError(f"datalist {datalist_path}: too few training entries ({len(training)}) to split off "
                               "validation; add a 'validation' list.")
        training, validation = training[:-n_val], training[-n_val:]
        logger.warning("datalist %s has no 'validation' list; validating on the last %d training entries.",
                       datalist_path, n_val)
    logger.info("dataset %s: %d training and %d validation volumes.", root, len(training), len(validation))
    return {"training": training, "validation": validation}
