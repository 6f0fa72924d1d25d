"""The robustness experiment: three arms trained alike, evaluated at several training budgets on every test domain.

Arms (bundle overrides on top of the shared ones):

* ``standard``: the paper's standard training (``latent_da False``; the FTN + STN framework without hard examples);
* ``augmented``: standard training plus strong image-space augmentation with MONAI's transforms
  (``strong_augmentation True``: bias field, Gibbs and k-space spike noise, contrast and histogram shifts, Gaussian
  noise and smoothing, random rescaling of the in-plane pixel size);
* ``cooperative``: cooperative training with latent space data augmentation (``latent_da True``).

The ablation arms (:data:`ABLATION_ARMS`) are the cooperative arm with one of the STN's hard-example terms left out
of the objective, or with the STN trained on the standard terms only; they run at one budget and a few seeds, to say
which term moves what the STN adds (FTN+STN - FTN).

Every arm uses the same data, seeds, budget, learning-rate schedule and checkpoint selection. Each run is the
bundle's own training workflow (``python -m monai.bundle run training``) saving, after each budget in ``--budgets``,
its raw weights and, with ``weight_averaging``, their exponential moving average (a learning curve of raw and settled
models from one constant-rate run); ``--models cosine`` adds, per budget, a run whose warm-up + cosine schedule ends
at that budget. Each model, and the run's model selected by validation (``model.pt``, the reference's model
selection), is evaluated by ``evaluate.json`` on every test domain: the deployment pipeline of ``inference.json`` on
whole volumes, FTN, FTN+STN and FTN+STN with label clean-up. Results go to the ledger
(:mod:`tools.robustness.ledger`, ``docs/results/<tag>/runs/``), which the report (:mod:`tools.robustness.report`)
reads alone. Started again with the same arguments, the experiment continues where it stopped: evaluated models are
skipped, trainings resume from their last epoch (``--resume True``), on any machine for what the ledger holds. From
the repository root::

    nice -n 19 python -m tools.robustness                                 # the v2 protocol: 3 arms x 5 seeds
    nice -n 19 python -m tools.robustness --ablation                      # its ablation: 3 arms x 3 seeds, 1 budget
    python -m tools.robustness --report_only                              # tables and plots from the ledger
    python -m tools.robustness --status                                   # how far every run has come
    python -m tools.robustness --protocol paper --device cuda --jobs 3    # the paper's full protocol on one GPU

Real data take ``--dataset_dir``, ``--datalist``, ``--test_set NAME=DATALIST#KEY`` (repeatable) and ``--in_domain``.
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib

from scripts import bundle_root
from scripts.engine.averaging import SaveAveragedAtIterations
from scripts.engine.checkpoints import SaveAtIterations, best_model_record, latest_training_state, state_epoch
from scripts.evaluation.metrics import METRIC_KEYS
from scripts.evaluation.report import read_csv
from scripts.inference.quality import QUALITY_KEYS

from ..machine import cpu_model
from .ledger import SELECTED, Ledger, RunSpec, checkpoint_stem, config_key

__all__ = [
    "ABLATION_ARMS",
    "ARMS",
    "MODELS",
    "PROTOCOLS",
    "Ablation",
    "Experiment",
    "Plan",
    "evaluation_command",
    "main",
    "parse_override",
    "training_command",
    "validation_interval",
]

logger = logging.getLogger(__name__)

ARMS: dict[str, dict[str, Any]] = {
    "standard": {"latent_da": False},
    "augmented": {"latent_da": False, "strong_augmentation": True},
    "cooperative": {"latent_da": True},
}
# the cooperative arm without part of the STN's learning from hard examples (the reference trains all of it)
ABLATION_ARMS: dict[str, dict[str, Any]] = {
    # the STN on the FTN's segmentation of the hard image left out (it trains the STN and, through it, the FTN)
    "coop_no_hard_shape": {"latent_da": True, "hard_terms_off": ["hard_shape"]},
    # the STN on the corrupted segmentation decoded from the masked shape code left out (it trains the STN only)
    "coop_no_corrupted_shape": {"latent_da": True, "hard_terms_off": ["hard_corrupted_shape"]},
    # the STN's parameters trained by the standard terms only; hard_shape still trains the FTN through the STN
    "coop_stn_standard": {"latent_da": True, "stn_hard_training": False},
}
ALL_ARMS = {**ARMS, **ABLATION_ARMS}
ARM_LABELS = {
    "standard": "Standard training",
    "augmented": "Standard + strong image augmentation",
    "cooperative": "Cooperative training (latent DA)",
    "coop_no_hard_shape": "Cooperative, without hard_shape",
    "coop_no_corrupted_shape": "Cooperative, without hard_corrupted_shape",
    "coop_stn_standard": "Cooperative, STN trained on the standard terms only",
}
# the models evaluated at a budget: the constant-rate run's weights after N iterations, their exponential moving
# average (train.json's weight_averaging), or the last model of a run whose warm-up + cosine schedule ends at N
MODELS = ("raw", "ema", "cosine")
# Shared settings per protocol. The learning rate of the runs that give the learning curves is constant, so a model
# saved after N iterations is the model of an N-iteration run (a decaying schedule would tie every budget to the
# longest one); the cosine models come from one run per budget.
PROTOCOLS: dict[str, dict[str, Any]] = {
    # the deployment window (evaluation through inference.json on whole slices), raw and weight-averaged models at
    # every budget, validation at least every 100 iterations
    "v2": {
        "budgets": [750, 1500, 3000],
        "seeds": [0, 1, 2, 3, 4],
        "overrides": {"lr_policy": "constant", "learning_rate": 0.001, "weight_averaging": True,
                      "ema_decay": 0.995},  # fmt: skip
        "eval_overrides": {},
        "validate_every": 100,
        "models": ["raw", "ema"],
        "ablation": {"arms": list(ABLATION_ARMS), "budget": 1500, "seeds": [0, 1, 2]},
        "train_subjects": 10,
        "val_subjects": 5,
        "test_subjects": 10,
    },
    # the first protocol (centre-crop training and validation, test sets at a 192 px crop, single snapshots),
    # superseded by v2; its results stay as they were in docs/results/synthetic_default/
    "v1": {"superseded_by": "v2", "tag": "synthetic_default"},
    # the reference implementation's protocol: 192 x 192 crops, 10 + 10 slices, Adam 1e-4 constant, about 12k
    # iterations (600 epochs of the 10-subject few-shot set)
    "paper": {
        "budgets": [1000, 2000, 4000, 8000, 12000],
        "seeds": [0, 1, 2],
        "overrides": {"lr_policy": "constant", "learning_rate": 0.0001, "crop_size": 192, "batch_size": 10,
                      "val_interval": 20},  # fmt: skip
        "eval_overrides": {},
        "models": ["raw"],
        "train_subjects": 10,
        "val_subjects": 5,
        "test_subjects": 20,
    },
}
DEFAULT_PROTOCOL = "v2"
EVALUATION_VERSION = 4  # bump when the metrics computed per volume change
# the bundle's best model by validation Dice (train.json's key-metric checkpoint), the reference's model selection
SELECTED_MODEL = "model.pt"
# the file each kind of model of a constant-rate run is saved to after N iterations
MODEL_FILES = {"raw": SaveAtIterations.filename, "ema": SaveAveragedAtIterations.filename}


def _cli_value(value: Any) -> str:
    """An override value as ``python -m monai.bundle`` (fire) parses it: Python literals, strings as they are."""
    return value if isinstance(value, str) else repr(value)


def parse_override(text: str) -> tuple[str, Any]:
    """``"key=value"`` -> ``(key, value)``, the value read as a Python literal when it is one, else a string."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"override {text!r}: expected key=value (e.g. crop_size=192).")
    key, raw = text.split("=", 1)
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    return key.strip(), value


def training_command(
    bundle: Path, run: Path, dataset_dir: str, datalist: str, seed: int, epochs: int, overrides: Mapping[str, Any]
) -> list[str]:
    """``python -m monai.bundle run training`` with this run's overrides (checkpoints and logs inside ``run``)."""
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training",
           "--config_file", str(bundle / "configs" / "train.json"), "--bundle_root", str(bundle),
           "--dataset_dir", dataset_dir, "--datalist", datalist, "--seed", str(seed), "--epochs", str(epochs),
           "--ckpt_dir", str(run / "models"), "--output_dir", str(run / "logs")]  # fmt: skip
    for key, value in overrides.items():
        cmd += [f"--{key}", _cli_value(value)]
    return cmd


def evaluation_command(
    bundle: Path,
    ckpt: Path,
    eval_dir: Path,
    test_sets: Mapping[str, str],
    model_name: str,
    overrides: Mapping[str, Any],
) -> list[str]:
    """``python -m monai.bundle run evaluating`` (train.json + evaluate.json) of one checkpoint on every test set."""
    configs = [str(bundle / "configs" / "train.json"), str(bundle / "configs" / "evaluate.json")]
    cmd = [sys.executable, "-m", "monai.bundle", "run", "evaluating", "--config_file", repr(configs),
           "--bundle_root", str(bundle), "--ckpt_path", str(ckpt), "--eval_dir", str(eval_dir),
           "--model_name", model_name, "--test_sets", repr(dict(test_sets))]  # fmt: skip
    for key, value in overrides.items():
        cmd += [f"--{key}", _cli_value(value)]
    return cmd


def run_logged(cmd: Sequence[str], log_path: Path, bundle: Path, threads: int | None = None) -> tuple[float, float]:
    """Run ``cmd`` with its output appended to ``log_path``; return (wall, CPU) seconds; raise naming the log.

    ``threads`` sets the child's OpenMP/MKL thread count (torch's intra-op threads). The CPU time (user + system of
    that child and its threads) measures the work independently of other load on the machine.
    """
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(bundle), os.environ.get("PYTHONPATH")) if p)}
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.time()
    with open(log_path, "a") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        process = subprocess.Popen(list(cmd), stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(process.pid, 0)  # this child's own resource usage
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        tail = "".join(log_path.read_text(errors="replace").splitlines(keepends=True)[-25:])
        raise RuntimeError(f"command failed (exit {code}); full log: {log_path}\n{tail}")
    return time.time() - start, usage.ru_utime + usage.ru_stime


def _slices(datalist_file: Path, key: str = "training") -> int:
    """Training slices of a datalist (from the NIfTI headers; the bundle keeps the slice count when resampling)."""
    content = json.loads(datalist_file.read_text())
    total = 0
    for entry in content[key]:
        path = Path(entry["image"])
        total += int(nib.load(str(path if path.is_absolute() else datalist_file.parent / path)).shape[2])
    return total


def validation_interval(iterations_per_epoch: int, every: int) -> int:
    """``val_interval`` (epochs) that validates at least every ``every`` iterations (once per epoch at the least)."""
    if iterations_per_epoch < 1 or every < 1:
        raise ValueError(f"need positive iterations per epoch and interval, got {iterations_per_epoch}, {every}.")
    return max(1, every // iterations_per_epoch)


@dataclass(frozen=True)
class Ablation:
    """The ablation arms, run at one ``budget`` with ``seeds``."""

    arms: tuple[str, ...]
    budget: int
    seeds: tuple[int, ...]


@dataclass
class Plan:
    """One training run and what is evaluated from it.

    ``budgets``: the iterations after which its models are saved and evaluated; ``models``: ``raw`` and/or ``ema``
    (what the constant-rate run saves; a cosine run's single model is its ``raw`` file, recorded with ``schedule``
    ``"cosine"``); ``selected``: whether its validation-selected model is evaluated.
    """

    spec: RunSpec
    budgets: list[int]
    models: tuple[str, ...]
    epochs: int
    selected: bool = True
    schedule: str = "constant"
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        suffix = f"_cosine{self.budgets[-1]}" if self.schedule == "cosine" else ""
        return f"{self.spec.name}{suffix}"


class Experiment:
    """The runs of one experiment tag: training, evaluation at every budget, ledger updates.

    Args:
        tag: results and run folder name.
        arms: arm names of :data:`ARMS` (or :data:`ABLATION_ARMS`).
        seeds: training seeds (paired across arms).
        budgets: iteration counts after which the models are saved and evaluated.
        dataset_dir, datalist: the training data.
        test_sets: ``{name: "<datalist.json>#<key>"}``.
        overrides: bundle overrides shared by all arms (training and evaluation).
        eval_overrides: bundle overrides of the evaluation only.
        results_dir: where the ledger lives (``<results_dir>/<tag>/runs``).
        run_dir: where checkpoints and logs go (outside git).
        data_fingerprint: identifies the training data in run keys.
        threads: torch threads per child process.
        models: which of :data:`MODELS` to evaluate at each budget (``ema`` needs ``weight_averaging`` True in
            ``overrides``).
        validate_every: validate at least every this many iterations (sets ``val_interval`` from the iterations per
            epoch); None keeps ``overrides``' ``val_interval``.
        ablation: with it, the runs are the ablation's (its arms, budget and seeds) instead of ``arms`` x ``seeds``.
    """

    def __init__(
        self,
        tag: str,
        arms: Sequence[str],
        seeds: Sequence[int],
        budgets: Sequence[int],
        dataset_dir: str,
        datalist: str,
        test_sets: Mapping[str, str],
        overrides: Mapping[str, Any],
        eval_overrides: Mapping[str, Any],
        results_dir: Path,
        run_dir: Path,
        data_fingerprint: str,
        threads: int | None = None,
        models: Sequence[str] = ("raw",),
        validate_every: int | None = None,
        ablation: Ablation | None = None,
    ) -> None:
        unknown = [a for a in (*arms, *(ablation.arms if ablation else ())) if a not in ALL_ARMS]
        if unknown:
            raise ValueError(f"unknown arms {unknown}; expected some of {list(ALL_ARMS)}.")
        if not budgets or min(budgets) < 1:
            raise ValueError(f"budgets must be positive iteration counts, got {list(budgets)}.")
        bad = [m for m in models if m not in MODELS]
        if bad or not models:
            raise ValueError(f"models must be some of {list(MODELS)}, got {list(models)}.")
        if "ema" in models and not overrides.get("weight_averaging"):
            raise ValueError("the ema models need weight_averaging=True among the overrides.")
        self.tag = tag
        self.arms, self.seeds, self.budgets = list(arms), list(seeds), sorted(set(int(b) for b in budgets))
        self.models = tuple(m for m in MODELS if m in models)
        self.ablation = ablation
        self.dataset_dir, self.datalist = dataset_dir, datalist
        self.test_sets = dict(test_sets)
        self.eval_overrides = dict(eval_overrides)
        self.ledger = Ledger(results_dir / tag / "runs")
        self.run_root = run_dir / tag
        self.data_fingerprint = data_fingerprint
        self.threads = threads
        self.bundle = Path(bundle_root())
        self.evaluation = {"test_sets": self.test_sets, "eval_overrides": self.eval_overrides,
                           "version": EVALUATION_VERSION}  # fmt: skip
        self.eval_key = config_key(self.evaluation)
        batch = int(overrides.get("batch_size", 6))
        self.iterations_per_epoch = math.ceil(_slices(Path(datalist)) / batch)
        self.overrides = dict(overrides)
        if validate_every is not None:
            self.overrides["val_interval"] = validation_interval(self.iterations_per_epoch, validate_every)
            if self.iterations_per_epoch > validate_every:
                logger.warning("an epoch has %d iterations, more than the %d between validations asked for; the "
                               "runs validate once per epoch", self.iterations_per_epoch, validate_every)  # fmt: skip
        self.epochs = self.epochs_for(self.budgets[-1])
        self._lock = threading.Lock()

    def epochs_for(self, iterations: int) -> int:
        """Epochs a run trains to reach ``iterations``."""
        return math.ceil(iterations / self.iterations_per_epoch)

    def _constant_plan(self, arm: str, seed: int, budgets: Sequence[int], selected: bool) -> Plan:
        overrides = {**self.overrides, **ALL_ARMS[arm], "checkpoint_iterations": list(budgets)}
        models = tuple(m for m in self.models if m != "cosine") or ("raw",)
        return Plan(RunSpec(arm, seed, overrides, self.data_fingerprint), list(budgets), models,
                    self.epochs_for(max(budgets)), selected)  # fmt: skip

    def _cosine_plan(self, arm: str, seed: int, budget: int) -> Plan:
        shared = {k: v for k, v in self.overrides.items() if k not in ("weight_averaging", "ema_decay")}
        overrides = {**shared, **ALL_ARMS[arm], "lr_policy": "one_cycle", "checkpoint_iterations": [budget],
                     "train#lr_scheduler#total_steps": budget}  # fmt: skip
        return Plan(RunSpec(arm, seed, overrides, self.data_fingerprint), [budget], ("raw",), self.epochs_for(budget),
                    selected=False, schedule="cosine")  # fmt: skip

    def plans(self) -> list[Plan]:
        """Every run, seed by seed (so partial results are complete per seed), cooperative first in each seed; the
        cosine runs of a seed after its constant-rate runs. With an ablation, only the ablation's runs."""
        if self.ablation is not None:
            return [self._constant_plan(arm, seed, [self.ablation.budget], selected=False)
                    for seed in self.ablation.seeds for arm in self.ablation.arms]  # fmt: skip
        order = sorted(self.arms, key=lambda a: a != "cooperative")
        plans = []
        for seed in self.seeds:
            if set(self.models) - {"cosine"}:
                plans += [self._constant_plan(arm, seed, self.budgets, selected=True) for arm in order]
            if "cosine" in self.models:
                plans += [self._cosine_plan(arm, seed, b) for arm in order for b in self.budgets]
        return plans

    def specs(self) -> list[RunSpec]:
        """The :class:`RunSpec` of every plan, in :meth:`plans` order."""
        return [plan.spec for plan in self.plans()]

    def pending(self, plan: Plan) -> list[tuple[str, int]]:
        """``(model, budget)`` of the plan not yet in the ledger."""
        return [(m, b) for m in plan.models for b in plan.budgets
                if b not in self.ledger.evaluated_iterations(plan.spec, self.eval_key, m)]  # fmt: skip

    def run(self, plan: Plan | RunSpec) -> dict[str, Any]:
        """Train (or resume) one run as far as needed, evaluate its pending models and its validation-selected model,
        update the ledger."""
        if isinstance(plan, RunSpec):
            plan = next(p for p in self.plans() if p.spec.key == plan.key)
        spec = plan.spec
        pending = self.pending(plan)
        selection_pending = plan.selected and not self.ledger.has_selected(spec, self.eval_key)
        if not pending and not selection_pending:
            logger.info("%s: every model evaluated earlier (ledger %s)", plan.name, spec.key)
            return self.ledger.record(spec)
        folder = self.run_root / spec.key
        models = folder / "models"
        missing = [(m, b) for m, b in pending if not (models / MODEL_FILES[m](b)).is_file()]
        record = self.ledger.write_record(spec, machine=f"{os.cpu_count()} CPUs, {cpu_model()}",
                                          threads=self.threads, epochs=plan.epochs, schedule=plan.schedule,
                                          budgets=plan.budgets)  # fmt: skip
        if missing or (selection_pending and not self._finished(models, plan.epochs)):
            resume = any(models.glob("training_state_*.pt"))
            overrides = {**spec.overrides, "resume": resume}
            cmd = training_command(self.bundle, folder, self.dataset_dir, self.datalist, spec.seed, plan.epochs,
                                   overrides)  # fmt: skip
            logger.info("%s: training %s (ledger %s)", plan.name, "resumed" if resume else "from the start", spec.key)
            wall, cpu = run_logged(cmd, folder / "train.log", self.bundle, self.threads)
            record = self.ledger.write_record(
                spec, train_s=record.get("train_s", 0.0) + wall, train_cpu_s=record.get("train_cpu_s", 0.0) + cpu
            )
            still = [f"{m} {b}" for m, b in missing if not (models / MODEL_FILES[m](b)).is_file()]
            if still:
                raise RuntimeError(f"{plan.name}: training saved no model for {still}; see {folder}")
        for model, budget in pending:
            record = self._evaluate(spec, models / MODEL_FILES[model](budget), budget, record, model)
            logger.info("%s: %s model after %d iterations evaluated on %d test sets", plan.name, model, budget,
                        len(self.test_sets))  # fmt: skip
        if selection_pending:
            state = latest_training_state(models)
            selection = best_model_record(state) if state is not None else None
            if selection is None or not (models / SELECTED_MODEL).is_file():
                logger.warning("%s: no validation ran in %d epochs, so the run selected no model (val_interval)",
                               plan.name, plan.epochs)  # fmt: skip
                return record
            selected = {k: selection[k] for k in ("epoch", "iteration", "val_dice")}
            record = self.ledger.write_record(spec, selected=selected)
            record = self._evaluate(spec, models / SELECTED_MODEL, SELECTED, record)
            logger.info("%s: the model selected by validation (epoch %d, %d iterations, validation Dice %.4f) "
                        "evaluated on %d test sets", plan.name, selected["epoch"], selected["iteration"],
                        selected["val_dice"], len(self.test_sets))  # fmt: skip
        return record

    def _finished(self, models: Path, epochs: int) -> bool:
        """Whether the run trained every epoch (so its validation-selected model is final)."""
        state = latest_training_state(models)
        return state is not None and (state_epoch(state) or 0) >= epochs and (models / SELECTED_MODEL).is_file()

    def _evaluate(
        self, spec: RunSpec, ckpt: Path, checkpoint: int | str, record: dict[str, Any], model: str = "raw"
    ) -> dict[str, Any]:
        """Evaluate one model of a run on every test set; its per-volume rows go to the ledger."""
        eval_dir = self.run_root / spec.key / "eval" / checkpoint_stem(checkpoint, model)
        cmd = evaluation_command(self.bundle, ckpt, eval_dir, self.test_sets, spec.arm,
                                 {**self.overrides, **self.eval_overrides})  # fmt: skip
        wall, cpu = run_logged(cmd, self.run_root / spec.key / "eval.log", self.bundle, self.threads)
        rows = read_csv(eval_dir / "volumes.csv")
        columns = [c for c in (*METRIC_KEYS, *QUALITY_KEYS) if c in rows[0]]
        with self._lock:
            self.ledger.write_evaluation(spec, self.eval_key, self.evaluation, checkpoint, rows, columns, model)
            return self.ledger.write_record(spec, eval_s=record.get("eval_s", 0.0) + wall,
                                            eval_cpu_s=record.get("eval_cpu_s", 0.0) + cpu)  # fmt: skip

    def status(self) -> list[dict[str, Any]]:
        """How far every run has come: models evaluated (ledger), models saved and the last epoch trained (run folder
        on this machine), one dict per run in :meth:`plans` order."""
        rows = []
        for plan in self.plans():
            models = self.run_root / plan.spec.key / "models"
            state = latest_training_state(models)
            evaluated = {m: sorted(set(self.ledger.evaluated_iterations(plan.spec, self.eval_key, m)))
                         for m in plan.models}  # fmt: skip
            rows.append({
                "run": plan.name, "key": plan.spec.key, "budgets": plan.budgets, "evaluated": evaluated,
                "complete": all(set(plan.budgets) <= set(v) for v in evaluated.values()),
                "selected": self.ledger.has_selected(plan.spec, self.eval_key) if plan.selected else None,
                "saved": [b for b in plan.budgets if (models / SaveAtIterations.filename(b)).is_file()],
                "epoch": state_epoch(state) if state is not None else 0, "epochs": plan.epochs,
            })  # fmt: skip
        return rows

    def status_table(self) -> str:
        """:meth:`status` as a Markdown table."""
        lines = ["| run | ledger key | budgets | evaluated | selected model evaluated | models saved | "
                 "epochs trained |", "|---|---|---|---|---|---|---|"]  # fmt: skip
        for row in self.status():
            if row["complete"]:
                done = "all"
            else:
                done = "; ".join(f"{m}: {v or 'none'}" for m, v in row["evaluated"].items())
            selected = "-" if row["selected"] is None else ("yes" if row["selected"] else "no")
            lines.append(f"| {row['run']} | {row['key']} | {row['budgets']} | {done} | {selected} | "
                         f"{row['saved'] or 'none'} | {row['epoch']} of {row['epochs']} |")  # fmt: skip
        return "\n".join(lines)

    def run_all(self, jobs: int = 1) -> dict[str, str]:
        """Run every pending run, ``jobs`` at a time; return ``{run name: error}`` for the runs that failed.

        A failed run does not stop the others: its error (naming its log) is logged when it happens and returned, and
        the same command retries it. An interrupt (Ctrl-C) starts nothing new and waits for the runs under way.
        """
        plans = self.plans()
        logger.info(
            "%d runs, models %s at %s iterations (epochs of %d iterations), %d at a time, %s thread(s) each",
            len(plans), list(self.models), sorted({b for p in plans for b in p.budgets}), self.iterations_per_epoch,
            jobs, self.threads or "default",
        )  # fmt: skip
        failed: dict[str, str] = {}
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            futures = {pool.submit(self.run, plan): plan for plan in plans}
            try:
                for future in as_completed(futures):
                    error = future.exception()
                    if error is not None:
                        name = futures[future].name
                        failed[name] = str(error)
                        logger.error("%s failed; the other runs go on. %s", name, error)
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)  # start nothing new; finished work is in the ledger
                raise
        return failed


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tools.robustness",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    root = Path(bundle_root())
    parser.add_argument("--protocol", choices=list(PROTOCOLS), default=DEFAULT_PROTOCOL,
                        help="preset of the settings below")  # fmt: skip
    parser.add_argument("--tag", default=None, help="results folder name (default: synthetic_<protocol>, or real)")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ALL_ARMS))
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default: the protocol's")
    parser.add_argument("--budgets", type=int, nargs="+", default=None, help="iterations (default: the protocol's)")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=None,
                        help="models evaluated at each budget (default: the protocol's): the constant-rate run's raw "
                        "weights, their moving average (ema), a warm-up + cosine run per budget (cosine)")  # fmt: skip
    parser.add_argument("--ablation", action="store_true",
                        help="run the protocol's ablation (its arms, budget and seeds) instead of the main runs")
    parser.add_argument("--model", choices=MODELS, default=None,
                        help="the models the report's tables and verdicts use (default: the settled kind, the one "
                        "with the smallest seed-to-seed spread at the largest budget)")  # fmt: skip
    parser.add_argument("--override", type=parse_override, action="append", default=[], metavar="KEY=VALUE",
                        help="bundle override for all arms, training and evaluation (repeatable)")  # fmt: skip
    parser.add_argument("--eval_override", type=parse_override, action="append", default=[], metavar="KEY=VALUE",
                        help="bundle override for evaluation only (repeatable)")  # fmt: skip
    parser.add_argument("--device", default=None, help="cpu or cuda (default: the bundle's choice)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per run (default: CPUs / jobs)")
    parser.add_argument("--run_dir", default=str(root / "runs" / "robustness"), help="checkpoints and logs")
    parser.add_argument("--results_dir", default=str(root.parent / "docs" / "results"), help="ledger and report")
    parser.add_argument("--report_only", action="store_true", help="rebuild the report from the ledger, run nothing")
    parser.add_argument("--status", action="store_true",
                        help="print how far every run has come (ledger and run folders), change nothing")  # fmt: skip
    synthetic = parser.add_argument_group("synthetic suite (used when --dataset_dir is not given)")
    synthetic.add_argument("--train_subjects", type=int, default=None, help="default: the protocol's (10)")
    synthetic.add_argument("--val_subjects", type=int, default=None)
    synthetic.add_argument("--test_subjects", type=int, default=None, help="per test domain")
    synthetic.add_argument("--data_seed", type=int, default=0)
    synthetic.add_argument("--domains", nargs="+", default=None, help="test domain names (default: all)")
    synthetic.add_argument("--copies", type=int, default=1, help="artefact copies per test volume")
    synthetic.add_argument("--cache_dir", default=None, help="default: $COOPSEG_CACHE_DIR or ~/.cache/coopseg")
    real = parser.add_argument_group("real data")
    real.add_argument("--dataset_dir", default=None, help="training data root (e.g. scripts.data.acdc output)")
    real.add_argument("--datalist", default=None, help="training datalist (default: <dataset_dir>/datalist.json)")
    real.add_argument("--test_set", action="append", default=[], metavar="NAME=DATALIST[#KEY]", help="repeatable")
    real.add_argument("--in_domain", default=None, help="the in-domain test set (default: the first)")
    return parser


def _superseded(name: str) -> None:
    """Refuse a superseded protocol: its ledger is read as it is, never rerun, re-keyed or re-reported."""
    protocol = PROTOCOLS[name]
    raise SystemExit(
        f"the {name} protocol is superseded by {protocol['superseded_by']}; its results stay as they were in "
        f"docs/results/{protocol['tag']}/report.md and its ledger is no longer run or rebuilt. Use --protocol "
        f"{protocol['superseded_by']}."
    )


def _ablation(protocol: Mapping[str, Any]) -> Ablation | None:
    spec = protocol.get("ablation")
    return Ablation(tuple(spec["arms"]), int(spec["budget"]), tuple(spec["seeds"])) if spec else None


def _setup(args: argparse.Namespace) -> dict[str, Any]:
    """Data, test sets and the settings of the chosen protocol, from the command line."""
    protocol = PROTOCOLS[args.protocol]
    overrides = {**protocol["overrides"], **dict(args.override)}
    if args.device:
        overrides["device"] = f"$torch.device('{args.device}')"
    ablation = _ablation(protocol)
    if args.ablation and ablation is None:
        raise SystemExit(f"the {args.protocol} protocol has no ablation.")
    if ablation is not None and args.seeds and args.ablation:
        ablation = Ablation(ablation.arms, ablation.budget, tuple(args.seeds))
    setup: dict[str, Any] = {
        "seeds": args.seeds or protocol["seeds"],
        "budgets": args.budgets or protocol["budgets"],
        "overrides": overrides,
        "eval_overrides": {**protocol["eval_overrides"], **dict(args.eval_override)},
        "models": args.models or protocol.get("models", ["raw"]),
        # an explicit --override val_interval=N wins over the protocol's iteration-based validation
        "validate_every": None if "val_interval" in dict(args.override) else protocol.get("validate_every"),
        "ablation": ablation,
    }
    if args.dataset_dir:
        if not args.test_set:
            raise SystemExit("--dataset_dir needs at least one --test_set NAME=DATALIST[#KEY].")
        dataset_dir = str(Path(args.dataset_dir).resolve())
        datalist = Path(args.datalist).resolve() if args.datalist else Path(dataset_dir) / "datalist.json"
        test_sets = {}
        for spec in args.test_set:
            name, _, path = spec.partition("=")
            if not path:
                raise SystemExit(f"--test_set {spec!r}: expected NAME=DATALIST[#KEY].")
            test_sets[name] = path
        setup.update(tag=args.tag or "real", dataset_dir=dataset_dir, datalist=str(datalist), test_sets=test_sets,
                     in_domain=args.in_domain or next(iter(test_sets)), groups={},
                     fingerprint=config_key({"datalist": datalist.read_text()}))  # fmt: skip
        return setup
    from .domains import ensure_test_domains, ensure_training_data

    n_train = args.train_subjects or protocol["train_subjects"]
    n_val = args.val_subjects or protocol["val_subjects"]
    n_test = args.test_subjects or protocol["test_subjects"]
    training = ensure_training_data(args.cache_dir, n_train, n_val, args.data_seed)
    suite = ensure_test_domains(args.cache_dir, n_test, args.data_seed, args.domains, args.copies)
    content = json.loads((suite / "datalist.json").read_text())
    setup.update(
        tag=args.tag or f"synthetic_{args.protocol}",
        dataset_dir=str(training),
        datalist=str(training / "datalist.json"),
        test_sets={name: f"{suite / 'datalist.json'}#{name}" for name in content["domains"]},
        in_domain="source",
        groups=content.get("groups", {}),
        descriptions=content["domains"],
        suite=suite,
        fingerprint=config_key({"training": training.name, "datalist": (training / "datalist.json").read_text()}),
    )
    return setup


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if "superseded_by" in PROTOCOLS[args.protocol]:
        _superseded(args.protocol)
    setup = _setup(args)
    results_dir = Path(args.results_dir)
    threads = args.threads or (max(1, (os.cpu_count() or 1) // args.jobs) if args.jobs > 1 else None)
    experiment = Experiment(
        setup["tag"], args.arms, setup["seeds"], setup["budgets"], setup["dataset_dir"], setup["datalist"],
        setup["test_sets"], setup["overrides"], setup["eval_overrides"], results_dir, Path(args.run_dir),
        setup["fingerprint"], threads, setup["models"], setup["validate_every"],
        setup["ablation"] if args.ablation else None,
    )  # fmt: skip
    if args.status:
        print(experiment.status_table())
        return 0
    failed = {} if args.report_only else experiment.run_all(args.jobs)
    from .report import write_report

    if setup.get("suite") is not None:
        from .domains import preview_domains

        preview_domains(setup["suite"], results_dir / setup["tag"] / "domains.png")
    ablation = setup["ablation"]
    written = write_report(
        experiment.ledger, results_dir / setup["tag"], experiment.eval_key, setup["in_domain"],
        [n for n in setup["test_sets"] if n != setup["in_domain"]], setup["groups"], args.arms, experiment.budgets,
        context={"command": "python -m tools.robustness " + " ".join(argv if argv is not None else sys.argv[1:]),
                 "protocol": args.protocol, "overrides": experiment.overrides,
                 "eval_overrides": setup["eval_overrides"], "models": list(experiment.models),
                 "descriptions": setup.get("descriptions", {}), "epochs": experiment.epochs,
                 "iterations_per_epoch": experiment.iterations_per_epoch},
        model=args.model, ablation=(ablation.arms, ablation.budget) if ablation else None,
    )  # fmt: skip
    for path in written:
        print(path)
    if failed:
        logger.error(
            "%d run(s) failed: %s. The report holds what finished; run the same command again to retry them.",
            len(failed), ", ".join(sorted(failed)),
        )  # fmt: skip
        return 1
    return 0
