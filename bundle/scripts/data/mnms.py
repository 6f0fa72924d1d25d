"""M&Ms (multi-centre, multi-vendor cardiac MR) from its original layout to a CoopSeg test datalist.

See docs/method.md section 5.6.

Source layout (the challenge download)::

    <root>/Training/Labeled/<code>/<code>_sa.nii.gz       4D cine, X, Y, slices, time
    <root>/Training/Labeled/<code>/<code>_sa_gt.nii.gz    4D labels, native codes 1 LV, 2 MYO, 3 RV (ED, ES filled)
    <root>/Validation/<code>/..., <root>/Testing/<code>/...  (the same files)
    <root>/*M&Ms*Dataset*Information*.csv                 one row per subject: External code, VendorName, Vendor,
                                                          Centre, ED, ES (0-based time indices), ...

Output::

    <out>/<code>/ED_img.nii.gz, ED_seg.nii.gz, ES_img.nii.gz, ES_seg.nii.gz    (3D frames, source geometry)
    <out>/datalist.json   "test": every labelled volume; "vendor_<V>" and "centre_<C>": per vendor and centre

Labels stay native (M&Ms already uses 1 LV, 2 MYO, 3 RV; docs/method.md section 5.6). Every entry carries ``vendor``,
``vendor_name``, ``centre`` and ``subset``, so results can be reported per vendor. Subjects without a ``_sa_gt`` file
(``Training/Unlabeled``) are skipped.

Command (from ``bundle/``, or with ``PYTHONPATH=bundle``)::

    python -m scripts.data.mnms --root /data/MnM --out /data/MnM_coopseg
"""

from __future__ import annotations

import argparse
import csv
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ..files import write_json_atomic
from ..labels import channel_names
from .errors import DatasetError
from .nifti import load_nifti, save_nifti_atomic

__all__ = ["MnmsInfo", "find_info_csv", "find_subjects", "prepare_mnms", "prepare_subject", "read_mnms_info"]

logger = logging.getLogger(__name__)

LABELS = channel_names()
FRAMES = ("ED", "ES")
# Accepted spellings of the CSV columns, compared after lower-casing and dropping spaces, '_', '-' and '.'.
COLUMN_ALIASES = {
    "code": ("externalcode", "code", "subject", "subjectcode", "patient", "patientid", "id"),
    "ed": ("ed", "edframe", "edindex", "edphase"),
    "es": ("es", "esframe", "esindex", "esphase"),
    "vendor": ("vendor", "vendorcode"),
    "vendor_name": ("vendorname", "manufacturer"),
    "centre": ("centre", "center", "centreid", "centerid", "site"),
}
REQUIRED_COLUMNS = ("code", "ed", "es", "vendor")


@dataclass(frozen=True)
class MnmsInfo:
    """One CSV row: ED/ES are **0-based** indices on the cine's time axis."""

    code: str
    ed: int
    es: int
    vendor: str
    vendor_name: str = ""
    centre: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    def frame(self, name: str) -> int:
        return self.ed if name == "ED" else self.es


def _normalise(name: str) -> str:
    return re.sub(r"[\s_\-.]", "", name.strip().lstrip("\ufeff").lower())


def find_info_csv(root: str | Path) -> Path:
    """The dataset-information CSV in ``root`` (``*M&Ms*Information*.csv`` preferred, else the only CSV)."""
    root = Path(root)
    candidates = sorted(root.glob("*.csv"))
    preferred = [p for p in candidates if "information" in p.name.lower()]
    if len(preferred) >= 1:
        if len(preferred) > 1:
            logger.warning("several dataset-information CSVs in %s; using %s", root, preferred[-1].name)
        return preferred[-1]
    if len(candidates) == 1:
        return candidates[0]
    raise DatasetError(
        f"{root}: cannot find the M&Ms dataset-information CSV (expected e.g. "
        "'211230_M&Ms_Dataset_information_diagnosis_opendataset.csv'); pass --csv <file>."
    )


def read_mnms_info(csv_path: str | Path) -> dict[str, MnmsInfo]:
    """``{code: MnmsInfo}`` from the dataset-information CSV; raises :class:`DatasetError` naming the file."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DatasetError(f"missing M&Ms dataset-information CSV: {csv_path}")
    with open(csv_path, newline="", encoding="utf-8-sig", errors="replace") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise DatasetError(f"{csv_path}: empty CSV.")
    header = [_normalise(h) for h in rows[0]]
    columns: dict[str, int] = {}
    for key, aliases in COLUMN_ALIASES.items():
        for alias in aliases:
            if alias in header:
                columns[key] = header.index(alias)
                break
    missing = [k for k in REQUIRED_COLUMNS if k not in columns]
    if missing:
        raise DatasetError(
            f"{csv_path}: no column for {missing} among {rows[0]}; expected 'External code', 'Vendor', 'ED', 'ES' "
            "(and optionally 'VendorName', 'Centre')."
        )
    infos: dict[str, MnmsInfo] = {}
    for number, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        cells = {key: row[i].strip() if i < len(row) else "" for key, i in columns.items()}
        code = cells["code"]
        indices = {}
        for key in ("ed", "es"):
            try:
                value = float(cells[key])
            except ValueError:
                value = float("nan")
            if not value.is_integer() or value < 0:
                raise DatasetError(
                    f"{csv_path}, line {number} ({code}): {key.upper()} must be a non-negative integer time index, "
                    f"got {cells[key]!r}."
                )
            indices[key] = int(value)
        centre = cells.get("centre", "")
        if centre.endswith(".0") and centre[:-2].isdigit():
            centre = centre[:-2]
        extra = {h: row[i].strip() for i, h in enumerate(rows[0]) if i < len(row) and i not in columns.values()}
        infos[code] = MnmsInfo(
            code,
            indices["ed"],
            indices["es"],
            cells["vendor"],
            cells.get("vendor_name", ""),
            centre,
            {k: v for k, v in extra.items() if k.strip()},
        )
    if not infos:
        raise DatasetError(f"{csv_path}: no subject rows.")
    return infos


def find_subjects(root: str | Path) -> dict[str, tuple[Path, Path, str]]:
    """``{code: (image, label, subset)}`` for every ``<code>/<code>_sa.nii.gz`` with a ``_sa_gt`` file under ``root``.

    ``subset`` is the folder path relative to ``root`` (e.g. ``Training/Labeled``).
    """
    root = Path(root)
    found: dict[str, tuple[Path, Path, str]] = {}
    unlabelled = 0
    for image in sorted(root.rglob("*_sa.nii.gz")):
        code = image.name[: -len("_sa.nii.gz")]
        if image.parent.name != code:
            continue
        label = image.parent / f"{code}_sa_gt.nii.gz"
        if not label.is_file():
            unlabelled += 1
            continue
        if code in found:
            raise DatasetError(f"subject {code} appears twice: {found[code][0]} and {image}.")
        found[code] = (image, label, image.parent.parent.relative_to(root).as_posix())
    if unlabelled:
        logger.info("M&Ms: skipped %d subjects without a _sa_gt label file.", unlabelled)
    if not found:
        raise DatasetError(f"{root}: no labelled subjects (<code>/<code>_sa.nii.gz with <code>_sa_gt.nii.gz).")
    return found


def prepare_subject(
    image_path: Path, label_path: Path, info: MnmsInfo, out_dir: Path, subset: str, csv_path: Path | str = "<csv>"
) -> list[dict[str, Any]]:
    """Extract the ED and ES 3D frames of one subject into ``out_dir/<code>/``; return the two datalist entries.

    Checks (each a :class:`DatasetError` naming the file): image and label 4D with equal shapes; ED/ES inside the
    time axis; label codes in 0-3; the ED and ES label frames not empty (an empty one means wrong indices).
    """
    image_img, label_img = load_nifti(image_path), load_nifti(label_path)
    if len(image_img.shape) != 4:
        raise DatasetError(
            f"{image_path}: expected a 4D cine (X, Y, slices, time), got shape {image_img.shape} (4D/3D mismatch)."
        )
    if tuple(label_img.shape) != tuple(image_img.shape):
        raise DatasetError(
            f"{label_path}: label shape {label_img.shape} does not match the cine {image_path} "
            f"{image_img.shape} (4D/3D mismatch)."
        )
    n_time = image_img.shape[3]
    entries = []
    for frame in FRAMES:
        t = info.frame(frame)
        if t >= n_time:
            raise DatasetError(
                f"{csv_path}: {info.code} {frame} = {t} is outside the {n_time} time frames of "
                f"{image_path} (0-based indices)."
            )
        label = np.asanyarray(label_img.dataobj[..., t])
        values = np.unique(label)
        bad = [v for v in values.tolist() if v != int(v) or not 0 <= v <= 3]
        if bad:
            raise DatasetError(
                f"{label_path}: unexpected label values {bad[:8]} in frame {t}; expected M&Ms codes "
                "0 background, 1 LV, 2 MYO, 3 RV."
            )
        if not (label > 0).any():
            raise DatasetError(
                f"{label_path}: the {frame} frame (index {t} from {csv_path}) is empty; the CSV's ED/ES "
                "are 0-based time indices."
            )
        image = np.asanyarray(image_img.dataobj[..., t])
        if image.dtype == np.float64:
            image = image.astype(np.float32)
        img_rel, seg_rel = f"{info.code}/{frame}_img.nii.gz", f"{info.code}/{frame}_seg.nii.gz"
        save_nifti_atomic(image, out_dir / img_rel, image_img)
        save_nifti_atomic(label, out_dir / seg_rel, label_img, dtype=np.uint8)
        entries.append(
            {
                "image": img_rel,
                "label": seg_rel,
                "subject": info.code,
                "frame": frame,
                "frame_index": t,
                "vendor": info.vendor,
                "vendor_name": info.vendor_name,
                "centre": info.centre,
                "subset": subset,
            }
        )
    return entries


def prepare_mnms(
    root: str | Path,
    out_dir: str | Path,
    csv_path: str | Path | None = None,
    subsets: Sequence[str] | None = None,
) -> Path:
    """Extract every labelled subject's ED/ES frames and write ``<out>/datalist.json``; return its path.

    Args:
        root: the M&Ms download.
        out_dir: output folder (must not be ``root`` or lie inside it).
        csv_path: the dataset-information CSV (default: found in ``root``).
        subsets: keep only these source folders (e.g. ``["Training/Labeled"]``, the 150 subjects the paper's
            M&Ms test used); default all labelled subjects.
    """
    root, out_dir = Path(root).resolve(), Path(out_dir).resolve()
    if not root.is_dir():
        raise DatasetError(f"M&Ms folder {root} does not exist.")
    if out_dir == root or root in out_dir.parents:
        raise DatasetError(f"output folder {out_dir} must not be the M&Ms folder {root} or lie inside it.")
    csv_path = Path(csv_path) if csv_path else find_info_csv(root)
    infos = read_mnms_info(csv_path)
    subjects = find_subjects(root)
    if subsets:
        subjects = {c: v for c, v in subjects.items() if v[2] in set(subsets)}
        if not subjects:
            raise DatasetError(f"{root}: no labelled subjects in the subsets {list(subsets)}.")
    no_info = sorted(code for code in subjects if code not in infos)
    if no_info:
        raise DatasetError(f"{csv_path}: no row for the labelled subjects {no_info[:10]} (found under {root}).")
    out_dir.mkdir(parents=True, exist_ok=True)
    entries: list[dict[str, Any]] = []
    for code, (image, label, subset) in tqdm(sorted(subjects.items()), desc="M&Ms", unit="subject"):
        entries += prepare_subject(image, label, infos[code], out_dir, subset, csv_path)
    content: dict[str, Any] = {
        "name": "M&Ms",
        "source": str(root),
        "info_csv": str(csv_path),
        "labels": LABELS,
        "label_note": "native M&Ms codes (1 LV, 2 MYO, 3 RV), not remapped",
        "test": entries,
    }
    for key, prefix in (("vendor", "vendor_"), ("centre", "centre_")):
        for value in sorted({e[key] for e in entries if e[key]}):
            content[f"{prefix}{value}"] = [e for e in entries if e[key] == value]
    counts = {k[len("vendor_") :]: len(v) for k, v in content.items() if k.startswith("vendor_")}
    logger.info("M&Ms: %d volumes from %d subjects; per vendor %s", len(entries), len(subjects), counts)
    return write_json_atomic(out_dir / "datalist.json", content)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.data.mnms",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--root", required=True, help="M&Ms download folder")
    parser.add_argument("--out", required=True, help="output folder for 3D frames and datalist.json")
    parser.add_argument("--csv", default=None, help="dataset-information CSV (default: found in --root)")
    parser.add_argument("--subsets", nargs="+", default=None, help="e.g. Training/Labeled (default: all labelled)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        path = prepare_mnms(args.root, args.out, csv_path=args.csv, subsets=args.subsets)
    except DatasetError as e:
        logger.error("%s", e)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
