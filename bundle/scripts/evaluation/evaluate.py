"""Test-set evaluation (docs/method.md section 6): per-volume, per-class Dice, HD95 and far false positives of the
FTN, FTN + STN and FTN + STN with the deployment's label clean-up (``inference.json``'s switches).

The unit is one 3D volume (patient x frame). Each volume is segmented as the inference workflow segments it: the
deployment's preprocessing (volume normalisation, in-plane resampling, whole slices), the deployment inferer (one
FTN pass gives FTN(x) and STN(FTN(x))), and its label post-processing back to the input grid
(:mod:`scripts.inference.deployment`, wired by ``train.json``'s ``validate`` section). Metrics
(:mod:`scripts.evaluation.metrics`) are computed on the input grid against the label as stored, with the volume's
own voxel spacing.

``evaluate.json`` wires :class:`TestSetEvaluation` to the training config; :mod:`scripts.evaluation.report` writes the
CSV, the markdown tables and the box plots. For test sets whose entries pair an ED and an ES volume per ``subject``,
:mod:`scripts.evaluation.agreement` compares the function indices of the deployed prediction with the reference's.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.contrib.handlers import ProgressBar
from ignite.engine import Events
from monai.data import DataLoader, Dataset
from monai.data.utils import affine_to_spacing

from ..cardiac_function import LabelVolumes, measure_volumes
from ..data.datalist import ensure_synthetic_dataset, load_datalist
from ..data.errors import DatasetError
from ..engine.evaluator import CooperativeEvaluator
from ..inference.quality import QUALITY_KEYS
from ..weights import load_weights, require_weights
from .agreement import function_pairs, write_agreement_report
from .metrics import volume_metrics
from .report import write_evaluation_report

__all__ = [
    "OUTPUTS",
    "FunctionVolumeCollector",
    "TestSetEvaluation",
    "VolumeMetricsCollector",
    "resolve_test_sets",
]

logger = logging.getLogger(__name__)

# validation output key -> the name used in tables: FTN alone, FTN + STN (the paper's final prediction) and FTN + STN
# with the deployment's label clean-up (inference.json's switches: what the inference workflow and the app return)
OUTPUTS = {"pred_ftn": "ftn", "pred_stn": "ftn_stn", "pred": "ftn_stn_post"}


def _spacing(tensor: Any, spatial_dims: int) -> tuple[float, ...]:
    affine = getattr(tensor, "affine", None)
    if affine is None:
        raise ValueError("the label has no affine (a MONAI MetaTensor from LoadImaged is expected).")
    return tuple(float(v) for v in affine_to_spacing(torch.as_tensor(affine), r=spatial_dims))


def _scalar(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else None
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return None


class _PerVolumeHandler:
    """Evaluator handler base: after each iteration, ``collect(item, source)`` for every volume of the batch, the
    decollated output ``item`` with the datalist entry ``source`` it came from."""

    def attach(self, engine: Any) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Any) -> None:
        outputs = engine.state.output if isinstance(engine.state.output, list) else [engine.state.output]
        batch = engine.state.batch if isinstance(engine.state.batch, list) else [engine.state.batch]
        for item, source in zip(outputs, batch, strict=True):
            self.collect(item, source)

    def collect(self, item: dict[str, Any], source: dict[str, Any]) -> None:
        raise NotImplementedError


class VolumeMetricsCollector(_PerVolumeHandler):
    """Evaluator handler: one row per volume and output (:data:`OUTPUTS`) with per-class Dice, HD95 in mm and far
    false positives, and the volume's quality scores (FTN-STN disagreement, entropy).

    Reads the decollated ``engine.state.output`` (one-hot outputs and ``label``, ``K, H, W, D`` on the input grid)
    and ``engine.state.batch`` (the datalist entry's own fields such as ``subject``, ``frame``, ``vendor``).
    """

    def __init__(self, test_set: str, empty_dice: float = 0.0) -> None:
        self.test_set = test_set
        self.empty_dice = empty_dice
        self.rows: list[dict[str, Any]] = []

    def collect(self, item: dict[str, Any], source: dict[str, Any]) -> None:
        label = item["label"]
        spacing = _spacing(source.get("label", label), label.ndim - 1)
        meta = getattr(source.get("image"), "meta", {}) or {}
        info = {k: _scalar(v) for k, v in source.items() if k not in ("image", "label") and _scalar(v) is not None}
        base = {
            "test_set": self.test_set,
            **info,
            "image": str(meta.get("filename_or_obj", "")),
            "spacing_mm": "x".join(f"{s:.4g}" for s in spacing),
        }
        quality = {k: float(item[k]) for k in QUALITY_KEYS if k in item}
        for key, output in OUTPUTS.items():
            metrics = volume_metrics(item[key], label, spacing, empty_dice=self.empty_dice)
            self.rows.append({**base, "output": output, **metrics, **quality})


class FunctionVolumeCollector(_PerVolumeHandler):
    """Evaluator handler: per volume, the entry's fields and the structure volumes (ml) of the deployed prediction
    and of the label (one-hot ``pred`` and ``label`` ``K, H, W, D`` on the input grid, the label's affine)."""

    def __init__(self) -> None:
        self.items: list[tuple[dict[str, Any], LabelVolumes, LabelVolumes]] = []

    def collect(self, item: dict[str, Any], source: dict[str, Any]) -> None:
        affine = getattr(source.get("label", item["label"]), "affine", None)
        if affine is None:
            raise ValueError("the label has no affine (a MONAI MetaTensor from LoadImaged is expected).")
        fields = {k: _scalar(v) for k, v in source.items() if k not in ("image", "label")}
        name = str(fields.get("subject", ""))
        codes = [torch.as_tensor(item[key]).argmax(0).cpu().numpy() for key in ("pred", "label")]
        volumes = [measure_volumes(c, np.asarray(affine), name) for c in codes]
        self.items.append(({k: v for k, v in fields.items() if v is not None}, *volumes))


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
        preprocessing: volume transform (the bundle's ``validate#preprocessing``: the deployment's, and the label).
        inferer: the bundle's ``validate#inferer`` (the deployment's ``CoopSegInferer``).
        postprocessing: the bundle's ``validate#postprocessing`` (the deployment's label post-processing of every
            output, then one-hot of the outputs and the label).
        output_dir: where ``volumes.csv``, ``results.md``, ``summary.json`` and the box plots go.
        ckpt_path: checkpoint to load first (None: use the network as it is).
        device: torch device.
        model_name: the row name in the tables.
        amp: autocast on CUDA.
        empty_dice: Dice when a class is absent from both prediction and label (reference: 0).
        num_workers: data loader workers.
        function_agreement: for test sets with ED/ES pairs per subject, also write ``function_agreement.csv``/
            ``.md``, ``function_cases.csv`` and Bland-Altman plots (:mod:`scripts.evaluation.agreement`).
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
        function_agreement: bool = True,
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
        self.function_agreement = function_agreement
        self.function_volumes: dict[str, list[tuple[dict[str, Any], LabelVolumes, LabelVolumes]]] = {}

    def evaluate_set(self, name: str, entries: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Per-volume rows of one test set."""
        loader = DataLoader(
            Dataset(list(entries), transform=self.preprocessing),
            batch_size=1,
            shuffle=False,
            num_workers=self.num_workers,
        )
        collector = VolumeMetricsCollector(name, empty_dice=self.empty_dice)
        volumes = FunctionVolumeCollector() if self.function_agreement else None
        evaluator = CooperativeEvaluator(
            device=self.device,
            val_data_loader=loader,
            network=self.network,
            inferer=self.inferer,
            postprocessing=self.postprocessing,
            val_handlers=[collector, volumes],
            amp=self.amp,
        )
        ProgressBar(desc=name, persist=False).attach(evaluator)
        evaluator.run()
        if volumes is not None:
            self.function_volumes[name] = volumes.items
        return collector.rows

    def write_function_agreement(self) -> list[Path]:
        """The function agreement of the test sets with ED/ES pairs (none: nothing written)."""
        results, notes = {}, {}
        for name, items in self.function_volumes.items():
            cases, remarks = function_pairs(items, name)
            if cases or remarks:
                results[name], notes[name] = cases, remarks
                logger.info("%s: function indices of %d subject(s), %d note(s)", name, len(cases), len(remarks))
        if not results:
            logger.info("no test set pairs ED and ES volumes per subject: no function agreement written.")
            return []
        return write_agreement_report(results, self.output_dir, notes)

    def run(self) -> list[dict[str, Any]]:
        """Evaluate every test set, write the outputs into ``output_dir`` and return all rows."""
        if self.ckpt_path:
            load_weights(self.network, require_weights(self.ckpt_path, option="--ckpt_path"), self.device)
        self.network.eval()
        rows: list[dict[str, Any]] = []
        for name, entries in self.test_sets.items():
            set_rows = self.evaluate_set(name, entries)
            means = {o: np.mean([r["dice_mean"] for r in set_rows if r["output"] == o]) for o in OUTPUTS.values()}
            logger.info(
                "%s: %d volumes, mean Dice FTN %.4f, FTN+STN %.4f, FTN+STN+post %.4f",
                name,
                len(set_rows) // len(OUTPUTS),
                means["ftn"],
                means["ftn_stn"],
                means["ftn_stn_post"],
            )
            rows += [{"model": self.model_name, **r} for r in set_rows]
        written = write_evaluation_report(rows, self.output_dir, list(self.test_sets))
        if self.function_agreement:
            written += self.write_function_agreement()
        logger.info("evaluation written to %s", ", ".join(str(p) for p in written))
        return rows
