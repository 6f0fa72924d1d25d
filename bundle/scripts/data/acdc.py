"""ACDC from its original download layout to CoopSeg datalists (docs/method.md sections 5.1, 5.2 and 5.5).

Source layout (the challenge download, ``training/`` and ``testing/`` alike; a ``database/`` parent is accepted)::

    <root>/training/patient001/Info.cfg                      ED: 1, ES: 12, Group: DCM, NbFrame: 30, ...
    <root>/training/patient001/patient001_4d.nii.gz          the cine, X, Y, Z, T
    <root>/training/patient001/patient001_frame01.nii.gz     one 3D frame (the ED and ES frames are labelled)
    <root>/training/patient001/patient001_frame01_gt.nii.gz  raw ACDC codes: 1 RV, 2 MYO, 3 LV

Output (the reference's preprocessed layout; the source is never modified)::

    <out>/001/ED_img.nii.gz, ED_seg.nii.gz, ES_img.nii.gz, ES_seg.nii.gz
    <out>/datalist_fewshot_cval{0..4}.json, datalist_standard.json, datalist.json (= few-shot cval 0), datalist_all.json

Images are byte copies of the source frames (geometry kept); labels are remapped to the project's codes
``0 background, 1 LV, 2 MYO, 3 RV`` and written with the source label's geometry. Intensity normalisation and
resampling happen when the bundle loads the volumes. Datalist paths are relative to ``<out>``, so
``--dataset_dir <out> --datalist <out>/datalist_fewshot_cval0.json`` trains the paper's setting.

Command (from ``bundle/``, or with ``PYTHONPATH=bundle``)::

    python -m scripts.data.acdc --root /data/ACDC --out /data/ACDC_coopseg
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ..files import write_json_atomic
from ..labels import channel_names
from .errors import DatasetError
from .nifti import copy_file_atomic, load_nifti, save_nifti_atomic

__all__ = [
    "TEST_IDS",
    "FEW_SHOT_POOL",
    "FEW_SHOT_TRAINING",
    "FEW_SHOT_VALIDATION",
    "STANDARD_TRAINING",
    "STANDARD_VALIDATION",
    "AcdcInfo",
    "acdc_splits",
    "find_patients",
    "prepare_acdc",
    "prepare_patient",
    "read_info_cfg",
    "remap_acdc_labels",
]

logger = logging.getLogger(__name__)

# Patient-ID lists of the reference (`medseg/dataset_loader/ACDC_few_shot_cv_settings.py`); docs/method.md section 5.5.
TEST_IDS = ("007", "008", "009", "010", "027", "028", "029", "030", "047", "048",
            "049", "050", "067", "068", "069", "070", "087", "088", "089", "090")  # fmt: skip
FEW_SHOT_POOL = ("001", "002", "003", "004", "005", "006", "012", "013", "021", "022",
                 "023", "024", "025", "026", "032", "033", "041", "042", "043", "044",
                 "045", "046", "052", "053", "061", "062", "063", "064", "065", "066",
                 "072", "073", "081", "082", "083", "084", "085", "086", "092", "093")  # fmt: skip
# train_test_split(pool, train_size=10, random_state=cval)[0], written out so no library version can change it.
FEW_SHOT_TRAINING = {
    0: ("001", "004", "012", "022", "044", "046", "053", "061", "073", "092"),
    1: ("001", "002", "006", "021", "022", "024", "025", "033", "041", "086"),
    2: ("013", "021", "024", "033", "043", "046", "052", "073", "084", "093"),
    3: ("001", "004", "021", "023", "044", "046", "053", "061", "082", "084"),
    4: ("001", "002", "004", "006", "021", "022", "046", "053", "072", "086"),
}
# [quirk] kept as in the reference: validation overlaps training for cval 1 (002, 022) and cval 4 (022).
FEW_SHOT_VALIDATION = {
    0: ("011", "071", "062", "095", "082"),
    1: ("011", "071", "002", "022", "095"),
    2: ("011", "071", "002", "062", "095"),
    3: ("011", "071", "022", "062", "095"),
    4: ("011", "071", "022", "062", "082"),
}
STANDARD_VALIDATION = ("005", "020", "023", "037", "042", "046", "066", "078", "082", "097")
STANDARD_TRAINING = ("001", "002", "003", "004", "006", "011", "012", "013", "014", "015",
                     "016", "017", "018", "019", "021", "022", "024", "025", "026", "031",
                     "032", "033", "034", "035", "036", "038", "039", "040", "041", "043",
                     "044", "045", "051", "052", "053", "054", "055", "056", "057", "058",
                     "059", "060", "061", "062", "063", "064", "065", "071", "072", "073",
                     "074", "075", "076", "077", "079", "080", "081", "083", "084", "085",
                     "086", "091", "092", "093", "094", "095", "096", "098", "099", "100")  # fmt: skip

# raw ACDC -> project: (l == 3) * 1 + (l == 2) * 2 + (l == 1) * 3 (docs/method.md section 5.2)
RAW_TO_PROJECT = np.array([0, 3, 2, 1], dtype=np.uint8)
LABELS = channel_names()
FRAMES = ("ED", "ES")
_PATIENT_DIR = re.compile(r"^patient(\d{3})$")


@dataclass(frozen=True)
class AcdcInfo:
    """The fields of a patient's ``Info.cfg``; ``ed`` and ``es`` are 1-based frame numbers."""

    ed: int
    es: int
    n_frames: int | None = None
    group: str | None = None
    height: float | None = None
    weight: float | None = None

    def frame(self, name: str) -> int:
        return self.ed if name == "ED" else self.es


def read_info_cfg(path: str | Path) -> AcdcInfo:
    """Parse ``Info.cfg`` (``key: value`` lines); raises :class:`DatasetError` naming the file on any problem."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"missing Info.cfg: {path} (expected lines 'ED: <frame>', 'ES: <frame>', 'NbFrame: <n>').")
    fields: dict[str, str] = {}
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        if ":" not in line:
            raise DatasetError(f"{path}, line {number}: expected 'key: value', got {line.strip()!r}.")
        key, value = line.split(":", 1)
        fields[key.strip().lower()] = value.strip()

    def integer(key: str, display: str, required: bool) -> int | None:
        if key not in fields:
            if required:
                raise DatasetError(f"{path}: no '{display}' entry (expected ED and ES frame numbers, 1-based).")
            return None
        try:
            value = float(fields[key])
        except ValueError:
            value = float("nan")
        if not value.is_integer():
            raise DatasetError(f"{path}: '{display}' must be an integer, got {fields[key]!r}.")
        return int(value)

    ed, es = integer("ed", "ED", True), integer("es", "ES", True)
    n_frames = integer("nbframe", "NbFrame", False)
    for name, value in (("ED", ed), ("ES", es)):
        if value < 1 or (n_frames is not None and value > n_frames):
            raise DatasetError(f"{path}: {name} = {value} is outside the frames 1..{n_frames or '?'} (1-based).")
    if ed == es:
        raise DatasetError(f"{path}: ED and ES are the same frame ({ed}).")

    def number(key: str) -> float | None:
        try:
            return float(fields[key]) if key in fields else None
        except ValueError:
            return None

    return AcdcInfo(ed, es, n_frames, fields.get("group"), number("height"), number("weight"))


def remap_acdc_labels(label: np.ndarray, source: str | Path = "<label>") -> np.ndarray:
    """Raw ACDC codes (0 BG, 1 RV, 2 MYO, 3 LV) -> project codes (0 BG, 1 LV, 2 MYO, 3 RV), ``uint8``.

    Raises :class:`DatasetError` naming ``source`` if the label holds anything but the integers 0-3.
    """
    values = np.unique(label)
    bad = [v for v in values.tolist() if v != int(v) or not 0 <= v <= 3]
    if bad:
        raise DatasetError(
            f"{source}: unexpected label values {bad[:8]}; expected raw ACDC codes 0 background, 1 RV, 2 MYO, 3 LV."
        )
    return RAW_TO_PROJECT[np.asarray(label).astype(np.int64)]


def acdc_splits() -> dict[str, dict[str, tuple[str, ...]]]:
    """``{"fewshot_cval0": {"training": ids, "validation": ids, "test": ids}, ..., "standard": {...}}``."""
    splits = {
        f"fewshot_cval{cval}": {
            "training": FEW_SHOT_TRAINING[cval],
            "validation": FEW_SHOT_VALIDATION[cval],
            "test": TEST_IDS,
        }
        for cval in range(5)
    }
    splits["standard"] = {"training": STANDARD_TRAINING, "validation": STANDARD_VALIDATION, "test": TEST_IDS}
    return splits


def _data_dirs(root: Path) -> dict[str, Path]:
    for base in (root, root / "database"):
        found = {name: base / name for name in ("training", "testing") if (base / name).is_dir()}
        if found:
            return found
    raise DatasetError(
        f"{root}: no 'training/' (or 'testing/') folder; expected the ACDC download layout "
        "<root>/training/patientNNN/{Info.cfg, patientNNN_4d.nii.gz, patientNNN_frameNN[_gt].nii.gz}."
    )


def find_patients(root: str | Path) -> dict[str, tuple[str, Path]]:
    """``{"001": ("training", <root>/training/patient001), ...}`` for every ``patientNNN`` folder."""
    patients: dict[str, tuple[str, Path]] = {}
    for subset, folder in _data_dirs(Path(root)).items():
        for child in sorted(folder.iterdir()):
            match = _PATIENT_DIR.match(child.name)
            if child.is_dir() and match:
                patients[match.group(1)] = (subset, child)
    if not patients:
        raise DatasetError(f"{root}: no patientNNN folders found under training/ or testing/.")
    return patients


def _check_frame(image_path: Path, label_path: Path, cine_shape: tuple[int, ...] | None, cine_path: Path) -> None:
    image_shape = tuple(load_nifti(image_path).shape)
    if len(image_shape) != 3:
        raise DatasetError(
            f"{image_path}: expected a 3D frame (X, Y, slices), got shape {image_shape} (4D/3D mismatch)."
        )
    label_shape = tuple(load_nifti(label_path).shape)
    if label_shape != image_shape:
        raise DatasetError(
            f"{label_path}: label shape {label_shape} does not match the frame {image_path} {image_shape}."
        )
    if cine_shape is not None and tuple(cine_shape[:3]) != image_shape:
        raise DatasetError(
            f"{cine_path}: cine shape {cine_shape} does not match the 3D frame {image_path} "
            f"{image_shape} (4D/3D mismatch)."
        )


def prepare_patient(patient_dir: str | Path, out_dir: str | Path, subset: str = "training") -> list[dict[str, Any]]:
    """Copy a patient's ED and ES frames and write their remapped labels; return the two datalist entries (with
    ``height_cm`` and ``weight_kg`` when ``Info.cfg`` gives Height and Weight, for BSA-indexed function indices).

    Checks (each a :class:`DatasetError` naming the file): ``Info.cfg`` present and sane; the ED/ES frame and
    ``_gt`` files present; frames 3D with labels of the same shape; the 4D cine (when present) 4D, with the frames'
    spatial shape and at least as many time points as ED, ES and ``NbFrame``; label values in 0-3.
    """
    patient_dir, out_dir = Path(patient_dir), Path(out_dir)
    name = patient_dir.name
    match = _PATIENT_DIR.match(name)
    if not match:
        raise DatasetError(f"{patient_dir}: expected a folder named patientNNN.")
    pid = match.group(1)
    info = read_info_cfg(patient_dir / "Info.cfg")
    cine_path = patient_dir / f"{name}_4d.nii.gz"
    cine_shape = None
    if cine_path.is_file():
        cine_shape = tuple(load_nifti(cine_path).shape)
        n_time = cine_shape[3] if len(cine_shape) == 4 else None
        if n_time is None:
            raise DatasetError(
                f"{cine_path}: expected a 4D cine (X, Y, slices, time), got shape {cine_shape} (4D/3D mismatch)."
            )
        needed = max(info.ed, info.es, info.n_frames or 0)
        if n_time < needed or (info.n_frames is not None and n_time != info.n_frames):
            raise DatasetError(
                f"{cine_path}: {n_time} time frames, but {patient_dir / 'Info.cfg'} says "
                f"NbFrame {info.n_frames}, ED {info.ed}, ES {info.es}."
            )
    else:
        logger.warning("%s: no 4D cine %s; using the frame files only.", patient_dir, cine_path.name)

    entries = []
    for frame in FRAMES:
        number = info.frame(frame)
        image_path = patient_dir / f"{name}_frame{number:02d}.nii.gz"
        label_path = patient_dir / f"{name}_frame{number:02d}_gt.nii.gz"
        for path, what in ((image_path, "image"), (label_path, "label")):
            if not path.is_file():
                raise DatasetError(
                    f"missing {frame} {what} file {path} ({frame} = frame {number} in {patient_dir / 'Info.cfg'})."
                )
        _check_frame(image_path, label_path, cine_shape, cine_path)
        label_img = load_nifti(label_path)
        label = remap_acdc_labels(np.asanyarray(label_img.dataobj), label_path)
        img_rel, seg_rel = f"{pid}/{frame}_img.nii.gz", f"{pid}/{frame}_seg.nii.gz"
        copy_file_atomic(image_path, out_dir / img_rel)
        save_nifti_atomic(label, out_dir / seg_rel, label_img, dtype=np.uint8)
        entry = {
            "image": img_rel,
            "label": seg_rel,
            "subject": name,
            "frame": frame,
            "frame_number": number,
            "subset": subset,
        }
        if info.group:
            entry["group"] = info.group
        if info.height is not None:
            entry["height_cm"] = info.height
        if info.weight is not None:
            entry["weight_kg"] = info.weight
        entries.append(entry)
    return entries


def prepare_acdc(
    root: str | Path,
    out_dir: str | Path,
    allow_missing: bool = False,
    subsets: Sequence[str] = ("training", "testing"),
) -> dict[str, Path]:
    """Build the CoopSeg copy of ACDC and its datalists; return ``{split name: datalist path}``.

    Args:
        root: the ACDC download (holding ``training/`` and optionally ``testing/``).
        out_dir: output folder (created; must not lie inside ``root``'s patient folders).
        allow_missing: drop split subjects that are not in ``root`` (with a warning) instead of failing.
        subsets: which source folders to convert.
    """
    root, out_dir = Path(root).resolve(), Path(out_dir).resolve()
    patients = find_patients(root)
    data_dirs = _data_dirs(root)
    for folder in data_dirs.values():
        if out_dir == folder or folder in out_dir.parents or out_dir == root:
            raise DatasetError(f"output folder {out_dir} must not be the ACDC folder {root} or lie inside {folder}.")
    out_dir.mkdir(parents=True, exist_ok=True)
    selected = {pid: v for pid, v in patients.items() if v[0] in subsets}
    logger.info("ACDC: converting %d patients from %s into %s", len(selected), root, out_dir)

    by_id: dict[str, list[dict[str, Any]]] = {}
    for pid, (subset, folder) in tqdm(sorted(selected.items()), desc="ACDC", unit="patient"):
        by_id[pid] = prepare_patient(folder, out_dir, subset)

    written: dict[str, Path] = {}
    common = {
        "name": "ACDC",
        "source": str(root),
        "labels": LABELS,
        "label_note": "remapped from raw ACDC (1 RV, 2 MYO, 3 LV) to 1 LV, 2 MYO, 3 RV",
    }
    for split, lists in acdc_splits().items():
        content: dict[str, Any] = {**common, "split": split}
        for key, ids in lists.items():
            missing = [pid for pid in ids if pid not in by_id]
            if missing:
                message = f"ACDC split '{split}' ({key}) lists patients missing from {root}: " + ", ".join(
                    f"patient{pid}" for pid in missing
                )
                if not allow_missing:
                    raise DatasetError(message + " (pass --allow_missing to drop them).")
                logger.warning("%s; dropped.", message)
            content[key] = [e for pid in ids if pid in by_id for e in by_id[pid]]
        if split in ("fewshot_cval1", "fewshot_cval4"):
            content["note"] = "validation overlaps training, as in the reference split (docs/method.md section 5.5)"
        written[split] = write_json_atomic(out_dir / f"datalist_{split}.json", content)
    paper = json.loads(written["fewshot_cval0"].read_text())
    paper["note"] = "the paper's setting: 10 training subjects, few-shot cval 0"
    written["default"] = write_json_atomic(out_dir / "datalist.json", paper)
    all_lists = {
        subset: [e for pid in sorted(by_id) for e in by_id[pid] if e["subset"] == subset] for subset in subsets
    }
    written["all"] = write_json_atomic(out_dir / "datalist_all.json", {**common, "split": "all", **all_lists})
    logger.info(
        "ACDC: %d volumes; datalists %s",
        sum(len(v) for v in by_id.values()),
        ", ".join(p.name for p in written.values()),
    )
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.data.acdc",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--root", required=True, help="ACDC download folder (holding training/ and testing/)")
    parser.add_argument("--out", required=True, help="output folder for volumes, labels and datalists")
    parser.add_argument("--allow_missing", action="store_true", help="drop split subjects absent from --root")
    parser.add_argument("--subsets", nargs="+", default=["training", "testing"], choices=["training", "testing"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        written = prepare_acdc(args.root, args.out, allow_missing=args.allow_missing, subsets=args.subsets)
    except DatasetError as e:
        logger.error("%s", e)
        return 1
    for split, path in written.items():
        print(f"{split}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
