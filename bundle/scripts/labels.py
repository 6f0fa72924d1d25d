"""The segmentation labels, defined once in ``configs/metadata.json``.

Codes and names come from ``network_data_format.outputs.pred.channel_def`` (``{"0": "background", "1": "lv",
"2": "myocardium", "3": "rv"}``), which is also what MONAI Label shows as segment names; ``label_info`` adds, per
code, the abbreviation used in tables and logs, a description, the display colour and the DICOM-SEG segmented
property type (SNOMED CT). Every other module, the MONAI Label app included, takes labels from here.

Label maps everywhere hold these integer codes (0 background, 1 LV blood pool, 2 LV myocardium, 3 RV blood pool).
The class count (the network's output channels) follows from them: :data:`NUM_CLASSES`, which the configs'
``num_classes`` reads through :func:`num_classes`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "BACKGROUND",
    "LABELS",
    "METADATA_FILE",
    "NUM_CLASSES",
    "Label",
    "by_name",
    "channel_names",
    "color_table",
    "load_labels",
    "num_classes",
]

METADATA_FILE = Path(__file__).resolve().parent.parent / "configs" / "metadata.json"
BACKGROUND = 0


@dataclass(frozen=True)
class Label:
    """One foreground class.

    Attributes:
        code: the integer in label maps and the channel index of the network output.
        name: the ``channel_def`` name (``lv``, ``myocardium``, ``rv``): segment names, metric keys (``dice_lv``).
        abbreviation: table and log heading (``LV``, ``MYO``, ``RV``).
        description: what the class covers, in words.
        color: display colour, RGB 0-255.
        dicom_type: DICOM ``SegmentedPropertyTypeCodeSequence`` item (``CodeValue``, ``CodingSchemeDesignator``,
            ``CodeMeaning``); ``dicom_type_modifier`` optionally qualifies it (laterality).
    """

    code: int
    name: str
    abbreviation: str
    description: str
    color: tuple[int, int, int]
    dicom_type: dict[str, str] = field(default_factory=dict, compare=False)
    dicom_type_modifier: dict[str, str] | None = field(default=None, compare=False)


@lru_cache(maxsize=8)
def _load(path: str) -> tuple[Label, ...]:
    meta = json.loads(Path(path).read_text())
    pred = meta["network_data_format"]["outputs"]["pred"]
    channels: dict[str, str] = pred["channel_def"]
    if pred.get("num_channels", len(channels)) != len(channels):
        raise ValueError(f"{path}: outputs.pred has num_channels {pred['num_channels']}, channel_def {len(channels)}.")
    info: dict[str, dict[str, Any]] = meta.get("label_info", {})
    labels = []
    for key, name in sorted(channels.items(), key=lambda kv: int(kv[0])):
        code = int(key)
        if code == BACKGROUND:
            continue
        extra = info.get(key)
        if extra is None:
            raise ValueError(f"{path}: label_info has no entry for label code {code} ({name!r}) of channel_def.")
        labels.append(
            Label(
                code=code,
                name=name,
                abbreviation=extra.get("abbreviation", name.upper()),
                description=extra.get("description", name),
                color=tuple(int(c) for c in extra["color"]),
                dicom_type=dict(extra.get("dicom_type", {})),
                dicom_type_modifier=dict(extra["dicom_type_modifier"]) if extra.get("dicom_type_modifier") else None,
            )
        )
    unknown = sorted(set(info) - set(channels))
    if unknown:
        raise ValueError(f"{path}: label_info has codes {unknown} that channel_def does not define.")
    return tuple(labels)


def load_labels(meta_file: str | os.PathLike | None = None) -> tuple[Label, ...]:
    """The foreground labels of a bundle's ``metadata.json`` (default: this bundle's), ordered by code."""
    return _load(str(Path(meta_file or METADATA_FILE).resolve()))


def num_classes(meta_file: str | os.PathLike | None = None) -> int:
    """Classes including background (the network's output channels) of a bundle's ``metadata.json`` (default: this
    bundle's); ``train.json`` and ``inference.json`` set ``num_classes`` with it."""
    return len(load_labels(meta_file)) + 1


LABELS: tuple[Label, ...] = load_labels()
"""This bundle's foreground labels, ordered by code."""
NUM_CLASSES = num_classes()
"""Classes including background: the network's output channels."""


def by_name(name: str, labels: tuple[Label, ...] = LABELS) -> Label:
    """The label with this ``channel_def`` name or abbreviation (case-insensitive)."""
    for label in labels:
        if name.lower() in (label.name.lower(), label.abbreviation.lower()):
            return label
    raise KeyError(f"no label named {name!r}; labels are {[lbl.name for lbl in labels]}.")


def color_table(labels: tuple[Label, ...] = LABELS) -> np.ndarray:
    """``uint8`` RGB colours indexed by label code (background black): ``color_table()[label_map]`` is an image."""
    table = np.zeros((max(lbl.code for lbl in labels) + 1, 3), dtype=np.uint8)
    for label in labels:
        table[label.code] = label.color
    return table


def channel_names(labels: tuple[Label, ...] = LABELS) -> dict[str, str]:
    """``{"0": "background", "1": "lv", ...}``: the ``channel_def`` mapping, as datalists record it."""
    return {str(BACKGROUND): "background", **{str(lbl.code): lbl.name for lbl in labels}}
