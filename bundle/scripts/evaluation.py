"""Test-set evaluation (method.md section 6): per-volume, per-class Dice and HD95 for FTN and FTN + STN.

The unit is one 3D volume (patient x frame). Each volume goes through the bundle's validation preprocessing (volume
normalisation, in-plane resampling, centre crop or pad to ``roi_size``; no per-slice renormalisation), is predicted
slice by slice by the bundle's ``CooperativeEvaluator`` (one FTN pass gives FTN(x) and STN(FTN(x))), argmax, no
post-processing. Metrics are computed on that grid:

* Dice per class (1 LV, 2 MYO, 3 RV) on the whole volume, ``2 |A & B| / (|A| + |B|)``. When prediction and
  reference are both empty the reference (``medpy.metric.binary.dc``) returns 0; ``empty_dice`` keeps that default
  and can be set to 1 or NaN.
* HD95 in mm per class, with the volume's voxel spacing (in-plane after resampling, the original slice spacing):
  MONAI's definition (``compute_hausdorff_distance(percentile=95)``), the larger of the two directed 95th-percentile
  surface distances. Both empty: NaN (left out of means). Exactly one empty: the volume's diagonal in mm, the
  largest distance possible, so a missed or hallucinated structure is penalised instead of ignored.

``evaluate.json`` wires :class:`TestSetEvaluation` to the training config; :mod:`scripts.report` writes the CSV, the
markdown tables and the box plots.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Events
from monai.data import DataLoader, Dataset
from scipy import ndimage
from scipy.spatial import cKDTree

from .data.datalist import DatasetError, ensure_synthetic_dataset, load_datalist
from .metrics import CLASS_NAMES

__all__ = [
    "OUTPUTS",
    "TestSetEvaluation",
    "VolumeMetricsCollector",
    "dice_score",
    "hd95_mm",
    "load_checkpoint",
    "resolve_test_sets",
    "volume_metrics",
]

logger = logging.getLogger(__name__)

# evaluator output key -> the name used in tables: FTN + STN (the paper's final prediction) and FTN alone
OUTPUTS = {"pred": "ftn_stn", "pred_ftn": "ftn"}


def dice_score(pred: np.ndarray, ref: np.ndarray, empty: float = 0.0) -> float:
    """Dice of two boolean masks; ``empty`` when both are empty (reference/medpy convention: 0)."""
    pred, ref = np.asarray(pred, dtype=bool), np.asarray(ref, dtype=bool)
    total = int(pred.sum()) + int(ref.sum())
    if total == 0:
        return float(empty)
    return 2.0 * int(np.logical_and(pred, ref).sum()) / total


def _edges(mask: np.ndarray) -> np.ndarray:
    """Surface voxels: the mask minus its erosion (MONAI ``get_mask_edges``; outside the array is background)."""
    return mask ^ ndimage.binary_erosion(mask)


def hd95_mm(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> float:
    """95th-percentile Hausdorff distance (mm) of two boolean masks with voxel ``spacing`` per axis.

    MONAI's definition (``compute_hausdorff_distance(percentile=95)``: surface voxels by erosion, Euclidean distances
    in mm from each surface to the other, the larger of the two directed 95th percentiles), computed on the masks'
    bounding box with a KD-tree; ``tests/test_evaluation.py`` checks it against MONAI. NaN when both masks are empty;
    the volume's diagonal (mm) when exactly one is.
    """
    pred, ref = np.asarray(pred, dtype=bool), np.asarray(ref, dtype=bool)
    if pred.shape != ref.shape or len(spacing) != pred.ndim:
        raise ValueError(f"shapes {pred.shape} and {ref.shape} with spacing {tuple(spacing)} do not agree.")
    has_pred, has_ref = bool(pred.any()), bool(ref.any())
    if not has_pred and not has_ref:
        return float("nan")
    scale = np.asarray(spacing, dtype=np.float64)
    if has_pred != has_ref:
        return float(np.linalg.norm(np.array(pred.shape, dtype=np.float64) * scale))
    union = np.argwhere(pred | ref)
    box = tuple(slice(max(lo - 1, 0), hi + 2) for lo, hi in zip(union.min(0), union.max(0), strict=True))
    pred_pts = np.argwhere(_edges(pred[box])) * scale
    ref_pts = np.argwhere(_edges(ref[box])) * scale
    pred_to_ref = cKDTree(ref_pts).query(pred_pts, k=1)[0]
    ref_to_pred = cKDTree(pred_pts).query(ref_pts, k=1)[0]
    return float(max(np.quantile(pred_to_ref, 0.95), np.quantile(ref_to_pred, 0.95)))


def volume_metrics(
    pred: np.ndarray | torch.Tensor,
    label: np.ndarray | torch.Tensor,
    spacing: Sequence[float],
    class_names: Mapping[int, str] = CLASS_NAMES,
    empty_dice: float = 0.0,
) -> dict[str, float]:
    """``{"dice_lv", "dice_myo", "dice_rv", "dice_mean", "hd95_lv", ..., "hd95_mean"}`` for one volume.

    ``pred`` and ``label`` are label maps ``H, W, D`` (codes 0 background, 1 LV, 2 MYO, 3 RV) or one-hot
    ``K, H, W, D``; ``spacing`` is the voxel size in mm per spatial axis. Means are over classes (NaN HD95 skipped).
    """
    pred = _label_map(pred, len(spacing))
    label = _label_map(label, len(spacing))
    if pred.shape != label.shape:
        raise ValueError(f"prediction shape {pred.shape} does not match label shape {label.shape}.")
    out: dict[str, float] = {}
    for code, name in class_names.items():
        out[f"dice_{name}"] = dice_score(pred == code, label == code, empty_dice)
        out[f"hd95_{name}"] = hd95_mm(pred == code, label == code, spacing)
    dices = [out[f"dice_{n}"] for n in class_names.values()]
    hds = [out[f"hd95_{n}"] for n in class_names.values() if not math.isnan(out[f"hd95_{n}"])]
    out["dice_mean"] = float(np.nanmean(dices)) if not all(math.isnan(d) for d in dices) else float("nan")
    out["hd95_mean"] = float(np.mean(hds)) if hds else float("nan")
    return out


def _label_map(x: np.ndarray | torch.Tensor, spatial_dims: int) -> np.ndarray:
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if arr.ndim == spatial_dims + 1:
        if arr.shape[0] == 1:
            return arr[0].astype(np.int64)
        return arr.argmax(axis=0)
    if arr.ndim == spatial_dims:
        return arr.astype(np.int64)
    raise ValueError(f"expected a label map with {spatial_dims} spatial axes or one-hot K, ..., got {arr.shape}.")


def _spacing(tensor: Any, spatial_dims: int) -> tuple[float, ...]:
    affine = getattr(tensor, "affine", None)
    if affine is None:
        raise ValueError("the label has no affine (a MONAI MetaTensor from LoadImaged is expected).")
    affine = np.asarray(affine.detach().cpu() if isinstance(affine, torch.Tensor) else affine, dtype=float)
    return tuple(float(v) for v in np.linalg.norm(affine[:spatial_dims, :spatial_dims], axis=0))


def _scalar(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else None
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return None


class VolumeMetricsCollector:
    """Evaluator handler: one row per volume and output (FTN + STN, FTN) with per-class Dice and HD95 in mm.

    Reads the decollated ``engine.state.output`` (one-hot ``pred``, ``pred_ftn`` and ``label``, ``K, H, W, D``) and
    ``engine.state.batch`` (the datalist entry's own fields such as ``subject``, ``frame``, ``vendor``).
    """

    def __init__(self, test_set: str, class_names: Mapping[int, str] = CLASS_NAMES, empty_dice: float = 0.0) -> None:
        self.test_set = test_set
        self.class_names = dict(class_names)
        self.empty_dice = empty_dice
        self.rows: list[dict[str, Any]] = []

    def attach(self, engine: Any) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Any) -> None:
        outputs = engine.state.output if isinstance(engine.state.output, list) else [engine.state.output]
        batch = engine.state.batch if isinstance(engine.state.batch, list) else [engine.state.batch]
        for item, source in zip(outputs, batch, strict=True):
            label = item["label"]
            spatial_dims = label.ndim - 1
            spacing = _spacing(source.get("label", label), spatial_dims)
            meta = getattr(source.get("image"), "meta", {}) or {}
            info = {k: _scalar(v) for k, v in source.items() if k not in ("image", "label") and _scalar(v) is not None}
            base = {
                "test_set": self.test_set,
                **info,
                "image": str(meta.get("filename_or_obj", "")),
                "spacing_mm": "x".join(f"{s:.4g}" for s in spacing),
            }
            for key, output in OUTPUTS.items():
                metrics = volume_metrics(item[key], label, spacing, self.class_names, self.empty_dice)
                self.rows.append({**base, "output": output, **metrics})


def load_checkpoint(network: torch.nn.Module, ckpt_path: str | Path, device: torch.device | str = "cpu") -> None:
    """Load a flat state dict (``models/model.pt``) into ``network``, strictly."""
    ckpt_path = Path(ckpt_path)
    if not ckpt_path.is_file():
        raise FileNotFoundError(
            f"checkpoint {ckpt_path} not found; train first or pass --ckpt_path <model.pt> (a flat state dict)."
        )
    state = torch.load(ckpt_path, map_location=device, weights_only=True)
    try:
        getattr(network, "module", network).load_state_dict(state)
    except RuntimeError as e:
        raise RuntimeError(
            f"checkpoint {ckpt_path} does not fit network_def: pass the settings it was trained with (e.g. --width) "
            f"or a checkpoint of this code version.\n{e}"
        ) from e
    logger.info("loaded %s", ckpt_path)


def _parse_spec(name: str, spec: Any) -> tuple[Path, str, Path]:
    if isinstance(spec, (str, Path)):
        # MONAI's config parser rewrites '#' inside values to its legacy separator '::'; accept both
        text = str(spec).replace("::", "#")
        path, _, key = text.rpartition("#") if "#" in text else (text, "", "")
        return Path(path), key or "test", Path(path).parent
    if isinstance(spec, Mapping) and "datalist" in spec:
        path = Path(spec["datalist"])
        return path, str(spec.get("key", "test")), Path(spec.get("base_dir") or path.parent)
    raise DatasetError(
        f"test set {name!r}: expected 'datalist.json' or 'datalist.json#key' or {{'datalist': ..., 'key': ..., "
        f"'base_dir': ...}}, got {spec!r}."
    )


def resolve_test_sets(
    test_sets: Mapping[str, Any] | None = None,
    dataset_dir: str | None = None,
    datalist_file: str | None = None,
    synthetic_cache_dir: str | None = None,
    synthetic_seed: int = 0,
    synthetic_split: dict[str, int] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """``{name: entries with absolute paths}`` for every named test set.

    ``test_sets`` maps a name to ``"<datalist.json>"`` (its ``test`` list), ``"<datalist.json>#<key>"`` or
    ``{"datalist": ..., "key": ..., "base_dir": ...}``; relative image paths are resolved against ``base_dir``
    (default: the datalist's folder). With no test sets, the ``test`` list of the training dataset is used
    (``dataset_dir`` + ``datalist_file``), or the synthetic phantom's test split when no dataset is configured.
    """
    if test_sets:
        resolved = {}
        for name, spec in test_sets.items():
            path, key, base = _parse_spec(name, spec)
            if not path.is_file():
                raise DatasetError(f"test set {name!r}: datalist {path} not found.")
            resolved[str(name)] = load_datalist(path, key, base)
        return resolved
    if not dataset_dir:
        dataset_dir = str(ensure_synthetic_dataset(synthetic_cache_dir, synthetic_seed, synthetic_split))
        datalist_file = None
    root = Path(dataset_dir)
    path = Path(datalist_file) if datalist_file else root / "datalist.json"
    if not path.is_file():
        raise DatasetError(f"no datalist at {path}; pass --test_sets \"{{'name': '<datalist.json>#<key>'}}\".")
    content = json.loads(path.read_text())
    if not content.get("test"):
        raise DatasetError(f"datalist {path} has no 'test' list; pass --test_sets to name the test data.")
    return {"test": load_datalist(path, "test", root)}


class TestSetEvaluation:
    """Evaluate one trained network on named test sets and write the per-volume CSV, tables and box plots.

    Args:
        network: the bundle's ``network`` (``CoopSegNet``), on ``device``.
        test_sets: ``{name: entries}`` from :func:`resolve_test_sets`.
        preprocessing: volume transform (the bundle's ``validate#preprocessing``).
        inferer: the bundle's ``validate#inferer`` (``SliceInferer``).
        postprocessing: the bundle's ``validate#postprocessing`` (softmax, argmax, one-hot of pred, pred_ftn, label).
        output_dir: where ``volumes.csv``, ``results.md``, ``summary.json`` and the box plots go.
        ckpt_path: checkpoint to load first (None: use the network as it is).
        device: torch device.
        model_name: the row name in the tables.
        amp: autocast on CUDA.
        empty_dice: Dice when a class is absent from both prediction and label (reference: 0).
        num_workers: data loader workers.
    """

    __test__ = False  # not a pytest class

    def __init__(
        self,
        network: torch.nn.Module,
        test_sets: Mapping[str, Sequence[dict[str, Any]]],
        preprocessing: Callable,
        inferer: Any,
        postprocessing: Callable,
        output_dir: str | Path,
        ckpt_path: str | Path | None = None,
        device: torch.device | str = "cpu",
        model_name: str = "CoopSeg",
        amp: bool = False,
        empty_dice: float = 0.0,
        num_workers: int = 0,
    ) -> None:
        if not test_sets:
            raise ValueError("no test sets to evaluate.")
        self.network = network
        self.test_sets = dict(test_sets)
        self.preprocessing = preprocessing
        self.inferer = inferer
        self.postprocessing = postprocessing
        self.output_dir = Path(output_dir)
        self.ckpt_path = ckpt_path
        self.device = torch.device(device)
        self.model_name = model_name
        self.amp = amp
        self.empty_dice = empty_dice
        self.num_workers = num_workers

    def evaluate_set(self, name: str, entries: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Per-volume rows of one test set."""
        from ignite.contrib.handlers import ProgressBar

        from .trainer import CooperativeEvaluator

        loader = DataLoader(
            Dataset(list(entries), transform=self.preprocessing),
            batch_size=1,
            shuffle=False,
            num_workers=self.num_workers,
        )
        collector = VolumeMetricsCollector(name, empty_dice=self.empty_dice)
        evaluator = CooperativeEvaluator(
            device=self.device,
            val_data_loader=loader,
            network=self.network,
            inferer=self.inferer,
            postprocessing=self.postprocessing,
            val_handlers=[collector],
            amp=self.amp,
        )
        ProgressBar(desc=name, persist=False).attach(evaluator)
        evaluator.run()
        return collector.rows

    def run(self) -> list[dict[str, Any]]:
        """Evaluate every test set, write the outputs into ``output_dir`` and return all rows."""
        from .report import write_evaluation_report

        if self.ckpt_path:
            load_checkpoint(self.network, self.ckpt_path, self.device)
        self.network.eval()
        rows: list[dict[str, Any]] = []
        for name, entries in self.test_sets.items():
            set_rows = self.evaluate_set(name, entries)
            ftn_stn = [r["dice_mean"] for r in set_rows if r["output"] == "ftn_stn"]
            ftn = [r["dice_mean"] for r in set_rows if r["output"] == "ftn"]
            logger.info(
                "%s: %d volumes, mean Dice FTN+STN %.4f, FTN %.4f",
                name,
                len(ftn_stn),
                float(np.mean(ftn_stn)),
                float(np.mean(ftn)),
            )
            rows += [{"model": self.model_name, **r} for r in set_rows]
        written = write_evaluation_report(rows, self.output_dir, list(self.test_sets))
        logger.info("evaluation written to %s", ", ".join(str(p) for p in written))
        return rows
