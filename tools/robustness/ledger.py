"""The results ledger: small files, committed to git, from which every table and plot of the experiment is rebuilt.

Layout under ``docs/results/<tag>/runs/``::

    <run key>/run.json                     what was trained: arm, seed, overrides, data, machine, times, status
    <run key>/<eval key>/iter<N>.csv       per-volume metrics of the model after N iterations on every test domain
    <run key>/<eval key>/ema<N>.csv        the same for the weight average after N iterations (runs that keep one)
    <run key>/<eval key>/selected.csv      the same for the model the run selected by validation (``run.json`` names
                                           its epoch, iteration and validation Dice under ``"selected"``)
    <run key>/<eval key>/evaluation.json   which test domains and evaluation settings the CSVs belong to

Every row read back names its ``model``: ``raw`` (the snapshot after N iterations of a constant-rate run), ``ema``
(the weight average of the same run at the same iteration), ``cosine`` (the last model of a run whose warm-up +
cosine schedule ends at N; its ``run.json`` says ``"schedule": "cosine"``) or ``selected``.

A run key is a hash of everything that determines the trained weights (arm, seed, bundle overrides, the training
data's fingerprint); an evaluation key a hash of the test domains and evaluation settings. Runs configured
differently therefore never mix, and adding a test domain re-evaluates existing checkpoints without retraining.
Checkpoints stay outside the ledger (and git), so another machine reuses every finished evaluation and retrains only
what is missing.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scripts.files import write_csv_atomic, write_json_atomic

__all__ = ["LEDGER_COLUMNS", "MODEL_PREFIXES", "SELECTED", "Ledger", "RunSpec", "checkpoint_stem", "config_key"]

# per-volume identifiers kept in the ledger (paths and other bulky fields stay out of git); ``source_subject`` names
# the subject an artefact copy was made from (empty for other volumes), so analyses can keep a subject's volumes
# together
LEDGER_COLUMNS = ("test_set", "subject", "source_subject", "frame", "output")
_FLOAT_DIGITS = 5
# the checkpoint of a run chosen by its validation Dice (the reference's model selection), beside the budgets
SELECTED = "selected"
# the file-name prefix of each kind of model saved at a budget: the run's own weights, or their average
MODEL_PREFIXES = {"raw": "iter", "ema": "ema"}


def checkpoint_stem(checkpoint: int | str, model: str = "raw") -> str:
    """The ledger file stem of a checkpoint: ``iter000250`` for a budget of 250 iterations (``ema000250`` for the
    weight average, ``model="ema"``), ``selected`` for :data:`SELECTED`."""
    if checkpoint == SELECTED:
        return SELECTED
    if isinstance(checkpoint, bool) or not isinstance(checkpoint, int) or checkpoint < 1:
        raise ValueError(f"checkpoint {checkpoint!r}: expected a positive iteration count or {SELECTED!r}.")
    if model not in MODEL_PREFIXES:
        raise ValueError(f"model {model!r}: expected one of {list(MODEL_PREFIXES)}.")
    return f"{MODEL_PREFIXES[model]}{checkpoint:06d}"


def config_key(content: Mapping[str, Any]) -> str:
    """A short stable hash of a JSON-serialisable mapping (order of keys does not matter)."""
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class RunSpec:
    """One training run: an arm (its own bundle overrides) at one seed, with the shared overrides and data."""

    arm: str
    seed: int
    overrides: Mapping[str, Any]
    data_fingerprint: str

    @property
    def key(self) -> str:
        return config_key(
            {"arm": self.arm, "seed": self.seed, "overrides": dict(self.overrides), "data": self.data_fingerprint}
        )

    @property
    def name(self) -> str:
        return f"{self.arm}_seed{self.seed}"


class Ledger:
    """Reads and writes the ledger of one experiment tag (``<results_dir>/<tag>/runs``)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def run_dir(self, spec: RunSpec) -> Path:
        return self.root / spec.key

    # runs -------------------------------------------------------------------------------------------------------
    def record(self, spec: RunSpec) -> dict[str, Any]:
        path = self.run_dir(spec) / "run.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def write_record(self, spec: RunSpec, **fields: Any) -> dict[str, Any]:
        record = {
            **self.record(spec),
            "arm": spec.arm,
            "seed": spec.seed,
            "overrides": dict(spec.overrides),
            "data": spec.data_fingerprint,
            **fields,
        }
        write_json_atomic(self.run_dir(spec) / "run.json", record)
        return record

    # evaluations -----------------------------------------------------------------------------------------------
    def eval_dir(self, spec: RunSpec, eval_key: str) -> Path:
        return self.run_dir(spec) / eval_key

    def evaluated_iterations(self, spec: RunSpec, eval_key: str, model: str = "raw") -> list[int]:
        """The budgets whose ``model`` (``raw`` or ``ema``) the ledger holds for this run."""
        folder, prefix = self.eval_dir(spec, eval_key), MODEL_PREFIXES[model]
        return sorted(int(p.stem[len(prefix) :]) for p in folder.glob(f"{prefix}[0-9]*.csv")) if folder.is_dir() else []

    def has_selected(self, spec: RunSpec, eval_key: str) -> bool:
        """Whether the run's validation-selected model was evaluated."""
        return (self.eval_dir(spec, eval_key) / f"{SELECTED}.csv").is_file()

    def write_evaluation(
        self,
        spec: RunSpec,
        eval_key: str,
        evaluation: Mapping[str, Any],
        checkpoint: int | str,
        rows: Sequence[Mapping[str, Any]],
        metric_columns: Sequence[str],
        model: str = "raw",
    ) -> Path:
        """Keep the per-volume rows of one checkpoint (identifiers, metrics, quality scores), rounded.

        ``checkpoint``: the budget (iterations) the model was saved at, or :data:`SELECTED`; ``model``: ``raw`` or
        ``ema`` (see :data:`MODEL_PREFIXES`).
        """
        stem = checkpoint_stem(checkpoint, model)
        folder = self.eval_dir(spec, eval_key)
        write_json_atomic(folder / "evaluation.json", dict(evaluation))
        columns = [*LEDGER_COLUMNS, *metric_columns]
        kept = [
            {c: (round(float(r[c]), _FLOAT_DIGITS) if c in metric_columns else r.get(c, "")) for c in columns if c in r}
            for r in rows
        ]
        return write_csv_atomic(folder / f"{stem}.csv", kept, columns)

    # reading everything -----------------------------------------------------------------------------------------
    def rows(self, eval_key: str | None = None, selected: bool = False) -> Iterable[dict[str, Any]]:
        """Every ledger row of the budgets' models (or, with ``selected``, of the validation-selected models), with
        ``arm``, ``seed``, ``model`` (see the module docstring), ``iteration`` (for a selected model, the iteration it
        was saved at, or -1 when the run record lacks it) and ``eval_key`` added; metrics as floats."""
        patterns = [f"*/{SELECTED}.csv"] if selected else [f"*/{p}[0-9]*.csv" for p in MODEL_PREFIXES.values()]
        for record_path in sorted(self.root.glob("*/run.json")):
            record = json.loads(record_path.read_text())
            paths = sorted(p for pattern in patterns for p in record_path.parent.glob(pattern))
            for csv_path in paths:
                key = csv_path.parent.name
                if eval_key is not None and key != eval_key:
                    continue
                if selected:
                    model, iteration = SELECTED, int((record.get("selected") or {}).get("iteration", -1))
                else:
                    model = next(m for m, p in MODEL_PREFIXES.items() if csv_path.stem.startswith(p))
                    iteration = int(csv_path.stem[len(MODEL_PREFIXES[model]) :])
                    if model == "raw" and record.get("schedule") == "cosine":
                        model = "cosine"
                with open(csv_path, newline="") as f:
                    for row in csv.DictReader(f):
                        out: dict[str, Any] = {"arm": record["arm"], "seed": int(record["seed"]), "eval_key": key}
                        out["iteration"], out["model"] = iteration, model
                        for name, value in row.items():
                            out[name] = value if name in LEDGER_COLUMNS else _float(value)
                        yield out

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(p.read_text()) for p in sorted(self.root.glob("*/run.json"))]


def _float(value: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")
