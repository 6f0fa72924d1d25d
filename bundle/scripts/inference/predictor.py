"""The inference engine: an evaluator without labels whose inferer also returns uncertainty maps and per-frame
quality scores; its summary log; and the function report of a run (cases of ED/ES pairs and cines)."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.engines import SupervisedEvaluator
from monai.engines.utils import IterationEvents

from ..cardiac_function import LabelVolumes, measure_volumes
from ..labels import LABELS
from .function_report import FunctionCase, write_function_report
from .inferer import FTN_PROB
from .inputs import volume_stem
from .quality import frame_quality_scores, is_flagged, worst_frame

__all__ = [
    "CoopSegPredictor",
    "FunctionReport",
    "InferenceSummary",
    "group_cases",
    "load_subject_info",
    "split_phase",
]

logger = logging.getLogger(__name__)

PHASES = ("ED", "ES")


class CoopSegPredictor(SupervisedEvaluator):
    """``SupervisedEvaluator`` for unlabelled volumes: ``output = {"pred": ..., <maps>, <quality scores>}``.

    Takes ``SupervisedEvaluator``'s arguments plus ``maps``, a subset of :data:`scripts.inference.inferer.MAP_NAMES`,
    and ``quality``: also return each frame's ``disagreement_score`` and ``entropy_score`` (``B, F``, from the same
    network pass) when the inferer refines (``refine=True``; with the FTN alone there is no score). ``inferer`` is a
    :class:`scripts.inference.inferer.CoopSegInferer` (any inferer when ``maps`` is empty and ``quality`` False).
    Batches hold ``image`` ``B, F, H, W, D``; labels are not needed.
    """

    def __init__(self, *args: Any, maps: Sequence[str] = (), quality: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.maps = tuple(maps)
        self.quality = quality

    def _scores_quality(self) -> bool:
        parts = hasattr(self.network, "segment") and hasattr(self.network, "refine_logits")
        return self.quality and parts and bool(getattr(self.inferer, "refine", False))

    def _iteration(self, engine: CoopSegPredictor, batchdata: dict[str, Any]) -> dict[str, Any]:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        inputs = batchdata["image"].to(engine.state.device, non_blocking=engine.non_blocking)
        scored = engine._scores_quality()
        with engine.mode(engine.network):
            if engine.maps or scored or hasattr(engine.inferer, "predict"):
                wanted = (*engine.maps, FTN_PROB) if scored else engine.maps
                outputs = engine.inferer.predict(inputs, engine.network, maps=wanted)
                if scored:
                    outputs.update(frame_quality_scores(outputs.pop(FTN_PROB), outputs["pred"], inputs.shape[1]))
            else:
                outputs = {"pred": engine.inferer(inputs, engine.network)}
        engine.state.output = outputs
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)  # decollation and post-processing run on this event
        return engine.state.output


class InferenceSummary:
    """Log, per volume, the files written, the volume of each structure (per frame for a 4D cine) and its quality.

    Reads ``pred`` (label codes ``F, H, W, D`` on the input grid, its affine giving the voxel size), every
    ``<key>_file`` of the post-processed outputs, the per-frame ``disagreement_score`` when the predictor gives it,
    and the batch's ``source``. ``engine.state.summary`` collects one row per volume: ``source``, ``shape``,
    ``frames`` (``[{abbreviation: ml}]``), ``volumes`` (:class:`scripts.cardiac_function.LabelVolumes`),
    ``files``, ``frame_scores`` (per-frame disagreement scores, None without them), ``quality_frame`` and
    ``quality_score`` (the worst frame and its score) and ``quality_flag`` (score above ``quality_threshold``, None
    without a score or a threshold; the log line then says ``QUALITY FLAG``).
    """

    def __init__(self, quality_threshold: float | None = None) -> None:
        self.quality_threshold = quality_threshold

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def started(self, engine: Engine) -> None:
        engine.state.summary = []

    def iteration_completed(self, engine: Engine) -> None:
        outputs = engine.state.output if isinstance(engine.state.output, list) else [engine.state.output]
        batch = engine.state.batch if isinstance(engine.state.batch, list) else [engine.state.batch]
        items = batch if len(batch) == len(outputs) else [{}] * len(outputs)
        for out, item in zip(outputs, items, strict=True):
            label = out.get("pred")
            if label is None:
                continue
            row = self.row(out, label, item if isinstance(item, Mapping) else {})
            engine.state.summary.append(row)
            logger.info("%s -> %s | %s%s", row["files"].get("pred", "?"), row["shape"], *self.describe(row))

    def row(self, out: Mapping[str, Any], label: Any, item: Mapping[str, Any]) -> dict[str, Any]:
        affine = np.asarray(getattr(label, "affine", np.eye(4)), dtype=np.float64)
        meta = getattr(label, "meta", {}) or {}
        source = str(item.get("source") or meta.get("filename_or_obj") or out.get("pred_file") or "?")
        codes = torch.as_tensor(label).detach().cpu().numpy()  # F, H, W, D
        volumes = measure_volumes(np.moveaxis(codes, 0, -1), affine, name=source)
        frames = [
            {lbl.abbreviation: round(float(volumes.ml[lbl.name][f]), 2) for lbl in LABELS}
            for f in range(volumes.n_frames)
        ]
        scores = out.get("disagreement_score")
        scores = None if scores is None else [float(s) for s in torch.as_tensor(scores).reshape(-1)]
        worst, score = worst_frame(scores) or (None, None)
        files = {k[: -len("_file")]: v for k, v in out.items() if isinstance(k, str) and k.endswith("_file")}
        return {
            "source": source,
            "shape": tuple(codes.shape[1:]),
            "frames": frames,
            "volumes": volumes,
            "files": files,
            "frame_scores": scores,
            "quality_frame": worst,
            "quality_score": score,
            "quality_flag": is_flagged(score, self.quality_threshold),
        }

    def describe(self, row: Mapping[str, Any]) -> tuple[str, str]:
        """``(volumes, quality)`` texts of a row's log line."""
        frames = row["frames"]
        volumes = "; ".join(
            ("" if len(frames) == 1 else f"frame {i}: ") + ", ".join(f"{k} {v:.1f} ml" for k, v in fr.items())
            for i, fr in enumerate(frames)
        )
        if row["quality_score"] is None:
            return volumes, ""
        where = "" if len(frames) == 1 else f" (frame {row['quality_frame']})"
        quality = f" | disagreement {row['quality_score']:.3f}{where}"
        if row["quality_flag"]:
            quality += f" QUALITY FLAG (> {self.quality_threshold:g})"
        return volumes, quality

    def completed(self, engine: Engine) -> None:
        n = len(engine.state.summary)
        written = sum(len(r["files"]) for r in engine.state.summary)
        flagged = sum(bool(r["quality_flag"]) for r in engine.state.summary)
        logger.info("segmented %d volume(s), wrote %d file(s).", n, written)
        if flagged:
            logger.warning("QUALITY FLAG on %d of %d volume(s): check their segmentations.", flagged, n)


# --- the function report of a run ---------------------------------------------------------------------------------
_CASE_KEYS = ("case", "subject", "name", "id")
_HEIGHT_KEYS = ("height_cm", "height")
_WEIGHT_KEYS = ("weight_kg", "weight")


def _first(record: Mapping[str, Any], keys: Sequence[str]) -> Any:
    lowered = {str(k).strip().lower(): v for k, v in record.items()}
    return next((lowered[k] for k in keys if lowered.get(k) not in (None, "")), None)


def _number(value: Any, what: str, case: str, path: Any) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not (math.isfinite(number) and number > 0):
        raise ValueError(f"subject info {path}: {what} of {case!r} must be a positive number, got {value!r}.")
    return number


def load_subject_info(source: str | os.PathLike | Mapping[str, Any] | None) -> dict[str, dict[str, float | None]]:
    """``{case: {"height_cm", "weight_kg"}}`` from a CSV or JSON file (or a mapping as JSON holds it).

    CSV: a header with a case column (``case``, ``subject``, ``name`` or ``id``) and ``height_cm`` (or ``height``,
    cm) and ``weight_kg`` (or ``weight``, kg). JSON: ``{case: {"height_cm": .., "weight_kg": ..}}`` or a list of
    records as the CSV's rows. Empty ``source``: no information. Errors name the file and the problem.
    """
    if not source:
        return {}
    path: Any = "<mapping>"
    if isinstance(source, Mapping):
        content: Any = dict(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"subject info {path} not found (pass a CSV or JSON file to --subject_info).")
        if path.suffix.lower() == ".json":
            try:
                content = json.loads(path.read_text())
            except json.JSONDecodeError as e:
                raise ValueError(f"subject info {path} is not valid JSON: {e}") from e
        else:
            with open(path, newline="") as f:
                content = list(csv.DictReader(f))
    if isinstance(content, Mapping):
        records = [{"case": case, **(v if isinstance(v, Mapping) else {})} for case, v in content.items()]
    elif isinstance(content, list) and all(isinstance(r, Mapping) for r in content):
        records = content
    else:
        raise ValueError(f"subject info {path}: expected {{case: {{height_cm, weight_kg}}}} or a list of rows.")
    info: dict[str, dict[str, float | None]] = {}
    for record in records:
        case = _first(record, _CASE_KEYS)
        if case is None:
            raise ValueError(f"subject info {path}: a row has no case name ({', '.join(_CASE_KEYS)}): {record}.")
        info[str(case).strip()] = {
            "height_cm": _number(_first(record, _HEIGHT_KEYS), "height (cm)", str(case), path),
            "weight_kg": _number(_first(record, _WEIGHT_KEYS), "weight (kg)", str(case), path),
        }
    return info


def split_phase(source: str) -> tuple[str, str | None]:
    """``(case, "ED" | "ES" | None)`` of an input: a final ``_``-separated token ``ED``/``ES`` (any case) names the
    phase and the rest of the stem the case (``p1_ed.nii.gz -> ("p1", "ED")``); a stem that is only ``ED``/``ES``
    takes its folder's name as the case."""
    stem = volume_stem(source)
    head, _, last = stem.rpartition("_")
    if last.upper() not in PHASES:
        return stem, None
    return head or Path(str(source).rstrip("/\\")).parent.name or stem, last.upper()


def group_cases(
    volumes: Sequence[LabelVolumes], subject_info: Mapping[str, Mapping[str, float | None]] | None = None
) -> list[FunctionCase]:
    """The cases of a run, in input order: each cine (``LabelVolumes.name`` its input path) is one; 3D inputs of
    the same case with exactly one ED and one ES (:func:`split_phase`) are a pair; other 3D inputs are single
    volumes. Height and weight come from ``subject_info`` by case name (exact, else case-insensitive)."""
    by_case: dict[str, dict[str, list[LabelVolumes]]] = {}
    for v in volumes:
        case, phase = split_phase(v.name)
        if v.n_frames == 1 and phase:
            by_case.setdefault(case, {p: [] for p in PHASES})[phase].append(v)
    paired = {case: (p["ED"][0], p["ES"][0]) for case, p in by_case.items() if [len(p[k]) for k in PHASES] == [1, 1]}
    cases, done = [], set()
    for v in volumes:
        case, phase = split_phase(v.name)
        if v.n_frames > 1:
            cases.append(FunctionCase(volume_stem(v.name), "cine", (v,)))
        elif phase and case in paired:
            if case not in done:
                cases.append(FunctionCase(case, "pair", paired[case]))
                done.add(case)
        else:
            cases.append(FunctionCase(volume_stem(v.name), "volume", (v,)))
    lowered = {k.lower(): k for k in subject_info or {}}
    for case in cases:
        key = case.case if case.case in (subject_info or {}) else lowered.get(case.case.lower())
        if key is not None:
            case.height_cm, case.weight_kg = subject_info[key]["height_cm"], subject_info[key]["weight_kg"]
    return cases


class FunctionReport:
    """At the end of a run, write its function report: ``function.csv``, ``function.md`` and a volume-time curve
    per cine in ``output_dir`` (:func:`scripts.inference.function_report.write_function_report`).

    The cases (:func:`group_cases`) come from the rows of :class:`InferenceSummary`, which must be attached before
    this handler. A case's quality score is the worst of its volumes' (per cine, the worst frame); it is flagged
    above ``quality_threshold``.

    Args:
        output_dir: where the report goes (existing reports are replaced).
        subject_info: CSV or JSON of height and weight per case (:func:`load_subject_info`); read at once, so a bad
            file stops the run before anything is segmented.
        quality_threshold: flag cases above this disagreement score (None: no flags).
        refine: the run refines with the STN; without it there is no quality score and the report says why.
        plots: write the volume-time curves.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        subject_info: str | os.PathLike | Mapping[str, Any] | None = None,
        quality_threshold: float | None = None,
        refine: bool = True,
        plots: bool = True,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.subject_info = load_subject_info(subject_info)
        self.quality_threshold = quality_threshold
        self.refine = refine
        self.plots = plots

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def completed(self, engine: Engine) -> None:
        rows = getattr(engine.state, "summary", None)
        if rows is None:
            raise RuntimeError("FunctionReport needs InferenceSummary among the handlers before it.")
        cases = group_cases([r["volumes"] for r in rows], self.subject_info)
        scores = {id(r["volumes"]): r["quality_score"] for r in rows}
        for case in cases:
            case.compute()
            found = [scores[id(v)] for v in case.volumes if scores[id(v)] is not None]
            case.quality_score = max(found) if len(found) == len(case.volumes) else None
            case.quality_flag = is_flagged(case.quality_score, self.quality_threshold)
        unavailable = (
            "the run used --refine False: the score compares the FTN with the STN"
            if not self.refine
            else "the network gives no FTN-STN disagreement"
        )
        written = write_function_report(cases, self.output_dir, self.quality_threshold, unavailable, self.plots)
        logger.info("function report: %s", ", ".join(str(p) for p in written))
