"""ACDC-C: MR artefact test sets made with TorchIO, reproducibly (docs/method.md section 5.7).

Four artefacts, the reference's constructor arguments, TorchIO defaults written out because defaults drift between
versions (torchio is pinned in requirements.txt):

* ``RandomBias``: ``RandomBiasField(coefficients=0.5, order=3)``
* ``RandomGhosting``: ``RandomGhosting(num_ghosts=(4, 10), axes=(0, 1, 2), intensity=(0.5, 1), restore=(0.02, 0.02))``
  (a fixed 0.02 was the default of the TorchIO the reference used; recent versions default to ``None`` and read a
  scalar as the range ``(0, value)``)
* ``RandomMotion``: ``RandomMotion(degrees=30, translation=10, num_transforms=2, image_interpolation="linear")``
* ``RandomSpike``: ``RandomSpike(num_spikes=(0, 1), intensity=(1, 3))`` (the reference's ``RandomSpike()`` default
  ``num_spikes=1`` was read as the range (0, 1) by its TorchIO: about half of the volumes get no spike; TorchIO 1.2
  defaults to exactly one spike)

Per volume, as the reference does: per-slice min-max to [0, 1]; the volume becomes a ``1, slices, H, W`` tensor (so
TorchIO's first spatial axis is the slice axis, unit spacing); the artefact; per-slice min-max to [0, 1] again. The
result is written with the source image's geometry and the label is copied unchanged. The reference first
crops or pads each slice to 192 x 192 at 1.36719 mm (about the whole field of view of ACDC); here the artefact is
applied to the full native slice, so the output keeps the source grid.

Reproducibility: every output volume has its own seed, derived from ``seed`` and the names of the artefact, subject,
frame and copy, so a set is identical whatever order or subset it is generated in.

Command (from ``bundle/``, or with ``PYTHONPATH=bundle``), on the ACDC test subjects prepared by
``scripts.data.acdc``::

    python -m scripts.data.artefacts --datalist /data/ACDC_coopseg/datalist.json --key test --out /data/ACDC-C

Output: ``<out>/<Artefact>/<subject>_<copy>/<frame>_img.nii.gz`` and ``<frame>_seg.nii.gz``, and
``<out>/datalist.json`` with one list per artefact (``RandomBias``, ...) and ``test`` (all).
"""

from __future__ import annotations

import argparse
import json
import logging
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..files import write_json_atomic
from ..labels import channel_names
from .errors import DatasetError
from .nifti import copy_file_atomic, load_nifti, save_nifti_atomic

__all__ = [
    "ARTEFACTS",
    "artefact_transform",
    "corrupt_volume",
    "generate_artefact_sets",
    "generate_acdc_c",
    "minmax_per_slice",
    "volume_seed",
]

logger = logging.getLogger(__name__)

ARTEFACTS = ("RandomBias", "RandomGhosting", "RandomMotion", "RandomSpike")


def artefact_transform(name: str) -> Any:
    """The TorchIO transform of artefact ``name`` (one of :data:`ARTEFACTS`), with every argument explicit."""
    import torchio as tio

    if name == "RandomBias":
        return tio.RandomBiasField(coefficients=0.5, order=3)
    if name == "RandomGhosting":
        # a fixed 0.02 as in the reference's TorchIO; TorchIO >= 0.19 reads a scalar as the range (0, 0.02)
        return tio.RandomGhosting(num_ghosts=(4, 10), axes=(0, 1, 2), intensity=(0.5, 1.0), restore=(0.02, 0.02))
    if name == "RandomMotion":
        return tio.RandomMotion(degrees=30, translation=10, num_transforms=2, image_interpolation="linear")
    if name == "RandomSpike":
        # the reference's default num_spikes=1 meant U{0, 1} spikes in its TorchIO; TorchIO 1.2 defaults to (1, 1)
        return tio.RandomSpike(num_spikes=(0, 1), intensity=(1.0, 3.0))
    raise ValueError(f"unknown artefact {name!r}; expected one of {ARTEFACTS}.")


def minmax_per_slice(volume: np.ndarray) -> np.ndarray:
    """Min-max each slice (last axis) of an ``H, W, D`` volume to [0, 1]; constant slices become 0. float32."""
    volume = np.asarray(volume, dtype=np.float32)
    low = volume.min(axis=(0, 1), keepdims=True)
    span = volume.max(axis=(0, 1), keepdims=True) - low
    return np.where(span > 0, (volume - low) / np.where(span > 0, span, 1.0), 0.0).astype(np.float32)


def volume_seed(seed: int, artefact: str, subject: str, frame: str, copy: int) -> int:
    """A 32-bit seed that depends only on ``seed`` and the names (not on generation order)."""
    key = zlib.crc32(f"{artefact}/{subject}/{frame}/{copy}".encode())
    return int(np.random.SeedSequence([int(seed), key]).generate_state(1)[0])


def corrupt_volume(image: np.ndarray, artefact: str, seed: int) -> np.ndarray:
    """Apply one artefact to an ``H, W, D`` volume (slices last); returns ``H, W, D`` float32, per slice in [0, 1].

    Deterministic given ``seed``; the global torch RNG is left as it was.
    """
    if image.ndim != 3:
        raise ValueError(f"expected an H, W, D volume, got shape {image.shape}.")
    x = minmax_per_slice(image)
    tensor = torch.from_numpy(np.ascontiguousarray(np.transpose(x, (2, 0, 1))[None]))  # 1, D, H, W as the reference
    transform = artefact_transform(artefact)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        out = transform(tensor)
    out = torch.as_tensor(out)[0].numpy().transpose(1, 2, 0)
    return minmax_per_slice(out)


def _subject_name(entry: dict[str, Any]) -> str:
    if entry.get("subject"):
        return str(entry["subject"])
    name = Path(entry["image"]).name
    return name.split(".")[0]


def generate_artefact_sets(
    entries: Sequence[dict[str, Any]],
    out_dir: str | Path,
    seed: int = 0,
    n_copies: int = 3,
    artefacts: Sequence[str] = ARTEFACTS,
    name: str = "ACDC-C",
    progress: bool = True,
) -> dict[str, list[dict[str, Any]]]:
    """Write the artefact copies of ``entries`` (absolute ``image``/``label`` paths) and return the datalist lists.

    Returns ``{artefact: [entries], ...}`` with paths relative to ``out_dir``; entries keep the source's ``frame``
    and extra fields and add ``subject`` (``<source subject>_<copy>``), ``source_subject``, ``artefact``, ``copy``
    and ``seed``.
    """
    out_dir = Path(out_dir)
    for artefact in artefacts:
        artefact_transform(artefact)  # fail early on an unknown name
    if n_copies < 1:
        raise ValueError(f"n_copies must be >= 1, got {n_copies}.")
    lists: dict[str, list[dict[str, Any]]] = {a: [] for a in artefacts}
    jobs = [(a, e, j) for a in artefacts for e in entries for j in range(n_copies)]
    for artefact, entry, copy in tqdm(jobs, desc=name, unit="volume", disable=not progress):
        source = _subject_name(entry)
        frame = str(entry.get("frame") or "vol")
        subject = f"{source}_{copy}"
        image_img = load_nifti(entry["image"])
        image = np.asanyarray(image_img.dataobj, dtype=np.float32)
        if image.ndim != 3:
            raise DatasetError(f"{entry['image']}: expected a 3D volume, got shape {image.shape}.")
        volume_rng_seed = volume_seed(seed, artefact, source, frame, copy)
        corrupted = corrupt_volume(image, artefact, volume_rng_seed)
        img_rel = f"{artefact}/{subject}/{frame}_img.nii.gz"
        seg_rel = f"{artefact}/{subject}/{frame}_seg.nii.gz"
        save_nifti_atomic(corrupted, out_dir / img_rel, image_img, dtype=np.float32)
        copy_file_atomic(entry["label"], out_dir / seg_rel)
        extra = {k: v for k, v in entry.items() if k not in ("image", "label", "subject")}
        lists[artefact].append(
            {
                **extra,
                "image": img_rel,
                "label": seg_rel,
                "subject": subject,
                "frame": frame,
                "source_subject": source,
                "artefact": artefact,
                "copy": copy,
                "seed": volume_rng_seed,
            }
        )
    return lists


def _load_entries(datalist: Path, key: str, base_dir: Path) -> list[dict[str, Any]]:
    try:
        content = json.loads(datalist.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DatasetError(f"cannot read datalist {datalist}: {e}") from e
    entries = content.get(key)
    if not isinstance(entries, list) or not entries:
        raise DatasetError(f"datalist {datalist} has no non-empty '{key}' list.")
    resolved = []
    for i, entry in enumerate(entries):
        item = dict(entry)
        for field in ("image", "label"):
            if field not in item:
                raise DatasetError(f"{datalist}: entry {i} of '{key}' has no '{field}'.")
            path = Path(item[field])
            item[field] = str(path if path.is_absolute() else base_dir / path)
            if not Path(item[field]).is_file():
                raise DatasetError(f"{datalist}: entry {i} of '{key}' points at a missing file {item[field]}.")
        resolved.append(item)
    return resolved


def generate_acdc_c(
    datalist: str | Path,
    out_dir: str | Path,
    key: str = "test",
    base_dir: str | Path | None = None,
    seed: int = 0,
    n_copies: int = 3,
    artefacts: Sequence[str] = ARTEFACTS,
) -> Path:
    """ACDC-C from a prepared ACDC datalist's ``key`` list (the 20 test subjects, ED and ES); returns the datalist.

    Paths in ``datalist`` are relative to ``base_dir`` (default: the datalist's folder).
    """
    datalist = Path(datalist)
    entries = _load_entries(datalist, key, Path(base_dir) if base_dir else datalist.parent)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lists = generate_artefact_sets(entries, out_dir, seed=seed, n_copies=n_copies, artefacts=artefacts)
    import torchio

    content: dict[str, Any] = {
        "name": "ACDC-C",
        "source": str(datalist.resolve()),
        "source_key": key,
        "seed": seed,
        "copies": n_copies,
        "torchio_version": torchio.__version__,
        "labels": channel_names(),
        **lists,
        "test": [e for a in artefacts for e in lists[a]],
    }
    logger.info("ACDC-C: %d volumes per artefact written to %s", len(entries) * n_copies, out_dir)
    return write_json_atomic(out_dir / "datalist.json", content)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.data.artefacts", description=__doc__.split("\n\n")[0])
    parser.add_argument("--datalist", required=True, help="prepared ACDC datalist (scripts.data.acdc output)")
    parser.add_argument("--key", default="test", help="the list to corrupt (default: test, the 20 test subjects)")
    parser.add_argument("--base_dir", default=None, help="root of the datalist's relative paths (default: its folder)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--copies", type=int, default=3, help="random copies per volume and artefact (reference: 3)")
    parser.add_argument("--artefacts", nargs="+", default=list(ARTEFACTS), choices=list(ARTEFACTS))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        path = generate_acdc_c(
            args.datalist,
            args.out,
            key=args.key,
            base_dir=args.base_dir,
            seed=args.seed,
            n_copies=args.copies,
            artefacts=args.artefacts,
        )
    except DatasetError as e:
        logger.error("%s", e)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
