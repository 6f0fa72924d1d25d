"""The robustness experiment: three arms trained alike, evaluated at several training budgets on every test domain.

Arms (bundle overrides on top of the shared ones):

* ``standard``: the paper's standard training (``latent_da False``; the FTN + STN framework without hard examples);
* ``augmented``: standard training plus strong image-space augmentation with MONAI's transforms
  (``strong_augmentation True``: bias field, Gibbs and k-space spike noise, contrast and histogram shifts, Gaussian
  noise and smoothing, random rescaling of the in-plane pixel size);
* ``cooperative``: cooperative training with latent space data augmentation (``latent_da True``).

Every arm uses the same data, seeds, budget, learning-rate schedule and checkpoint selection. Each run is the
bundle's own training workflow (``python -m monai.bundle run training``) saving the model after each budget in
``--budgets`` (a learning curve from one run); each of those models, and the run's model selected by validation
(``model.pt``, the reference's model selection), is evaluated by ``evaluate.json`` on every test domain. Results go to
the ledger (:mod:`tools.robustness.ledger`, ``docs/results/<tag>/runs/``), which the report
(:mod:`tools.robustness.report`) reads alone. Started again with the same arguments, the experiment continues where
it stopped: evaluated budgets are skipped, trainings resume from their last epoch (``--resume True``), on any machine
for what the ledger holds. From the repository root::

    nice -n 19 python -m tools.robustness                                 # synthetic few-shot suite, CPU defaults
    python -m tools.robustness --protocol paper --device cuda --jobs 3    # the paper's full protocol on one GPU
    python -m tools.robustness --report_only                              # tables and plots from the ledger
    python -m tools.robustness --status                                   # how far every run has come

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
from pathlib import Path
from typing import Any

import nibabel as nib

from scripts import bundle_root
from scripts.engine.checkpoints import SaveAtIterations, best_model_record, latest_training_state, state_epoch
from scripts.evaluation.metrics import METRIC_KEYS
from scripts.evaluation.report import read_csv
from scripts.inference.quality import QUALITY_KEYS

from ..machine import cpu_model
from .ledger import SELECTED, Ledger, RunSpec, checkpoint_stem, config_key

__all__ = [
    "ARMS",
    "PROTOCOLS",
    "Experiment",
    "evaluation_command",
    "main",
    "parse_override",
    "training_command",
]

logger = logging.getLogger(__name__)

ARMS: dict[str, dict[str, Any]] = {
    "standard": {"latent_da": False},
    "augmented": {"latent_da": False, "strong_augmentation": True},
    "cooperative": {"latent_da": True},
}
ARM_LABELS = {
    "standard": "Standard training",
    "augmented": "Standard + strong image augmentation",
    "cooperative": "Cooperative training (latent DA)",
}
# Shared settings. The learning rate is constant, so a model saved after N iterations is the model of an N-iteration
# run (a decaying schedule would tie every budget to the longest one).
PROTOCOLS: dict[str, dict[str, Any]] = {
    "default": {
        "budgets": [250, 500, 1000, 1500],
        "seeds": [0, 1, 2, 3, 4],
        "overrides": {"lr_policy": "constant", "learning_rate": 0.001, "val_interval": 10},
        "eval_overrides": {"crop_size": 192},
        "train_subjects": 10,
        "val_subjects": 5,
        "test_subjects": 10,
    },
    # the reference implementation's protocol: 192 x 192 crops, 10 + 10 slices, Adam 1e-4 constant, about 12k
    # iterations (600 epochs of the 10-subject few-shot set)
    "paper": {
        "budgets": [1000, 2000, 4000, 8000, 12000],
        "seeds": [0, 1, 2],
        "overrides": {"lr_policy": "constant", "learning_rate": 0.0001, "crop_size": 192, "batch_size": 10,
                      "val_interval": 20},  # fmt: skip
        "eval_overrides": {"crop_size": 192},
        "train_subjects": 10,
        "val_subjects": 5,
        "test_subjects": 20,
    },
}
EVALUATION_VERSION = 2  # bump when the metrics computed per volume change
# the bundle's best model by validation Dice (train.json's key-metric checkpoint), the reference's model selection
SELECTED_MODEL = "model.pt"


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


class Experiment:
    """The runs of one experiment tag: training, evaluation at every budget, ledger updates.

    Args:
        tag: results and run folder name.
        arms: arm names of :data:`ARMS`.
        seeds: training seeds (paired across arms).
        budgets: iteration counts after which the model is saved and evaluated.
        dataset_dir, datalist: the training data.
        test_sets: ``{name: "<datalist.json>#<key>"}``.
        overrides: bundle overrides shared by all arms (training and evaluation).
        eval_overrides: bundle overrides of the evaluation only (e.g. its field of view).
        results_dir: where the ledger lives (``<results_dir>/<tag>/runs``).
        run_dir: where checkpoints and logs go (outside git).
        data_fingerprint: identifies the training data in run keys.
        threads: torch threads per child process.
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
    ) -> None:
        unknown = [a for a in arms if a not in ARMS]
        if unknown:
            raise ValueError(f"unknown arms {unknown}; expected some of {list(ARMS)}.")
        if not budgets or min(budgets) < 1:
            raise ValueError(f"budgets must be positive iteration counts, got {list(budgets)}.")
        self.tag = tag
        self.arms, self.seeds, self.budgets = list(arms), list(seeds), sorted(set(int(b) for b in budgets))
        self.dataset_dir, self.datalist = dataset_dir, datalist
        self.test_sets = dict(test_sets)
        self.overrides, self.eval_overrides = dict(overrides), dict(eval_overrides)
        self.ledger = Ledger(results_dir / tag / "runs")
        self.run_root = run_dir / tag
        self.data_fingerprint = data_fingerprint
        self.threads = threads
        self.bundle = Path(bundle_root())
        self.evaluation = {"test_sets": self.test_sets, "eval_overrides": self.eval_overrides,
                           "version": EVALUATION_VERSION}  # fmt: skip
        self.eval_key = config_key(self.evaluation)
        batch = int(self.overrides.get("batch_size", 6))
        self.iterations_per_epoch = math.ceil(_slices(Path(datalist)) / batch)
        self.epochs = math.ceil(self.budgets[-1] / self.iterations_per_epoch)
        self._lock = threading.Lock()

    def specs(self) -> list[RunSpec]:
        """Every run, seed by seed (so partial results are complete per seed), cooperative first in each seed."""
        order = sorted(self.arms, key=lambda a: a != "cooperative")
        return [
            RunSpec(arm, seed, {**self.overrides, **ARMS[arm], "checkpoint_iterations": self.budgets},
                    self.data_fingerprint)  # fmt: skip
            for seed in self.seeds
            for arm in order
        ]

    def pending(self, spec: RunSpec) -> list[int]:
        done = set(self.ledger.evaluated_iterations(spec, self.eval_key))
        return [b for b in self.budgets if b not in done]

    def run(self, spec: RunSpec) -> dict[str, Any]:
        """Train (or resume) one run as far as needed, evaluate its pending budgets and its validation-selected model,
        update the ledger."""
        pending = self.pending(spec)
        selection_pending = not self.ledger.has_selected(spec, self.eval_key)
        if not pending and not selection_pending:
            logger.info("%s: every budget and the selected model evaluated earlier (ledger %s)", spec.name, spec.key)
            return self.ledger.record(spec)
        folder = self.run_root / spec.key
        models = folder / "models"
        missing = [b for b in pending if not (models / SaveAtIterations.filename(b)).is_file()]
        record = self.ledger.write_record(spec, machine=f"{os.cpu_count()} CPUs, {cpu_model()}",
                                          threads=self.threads, epochs=self.epochs)  # fmt: skip
        if missing or (selection_pending and not self._finished(models)):
            resume = any(models.glob("training_state_*.pt"))
            overrides = {**spec.overrides, "resume": resume}
            cmd = training_command(self.bundle, folder, self.dataset_dir, self.datalist, spec.seed, self.epochs,
                                   overrides)  # fmt: skip
            logger.info("%s: training %s (ledger %s)", spec.name, "resumed" if resume else "from the start", spec.key)
            wall, cpu = run_logged(cmd, folder / "train.log", self.bundle, self.threads)
            record = self.ledger.write_record(
                spec, train_s=record.get("train_s", 0.0) + wall, train_cpu_s=record.get("train_cpu_s", 0.0) + cpu
            )
            still = [b for b in missing if not (models / SaveAtIterations.filename(b)).is_file()]
            if still:
                raise RuntimeError(f"{spec.name}: training saved no model at iterations {still}; see {folder}")
        for budget in pending:
            record = self._evaluate(spec, models / SaveAtIterations.filename(budget), budget, record)
            logger.info("%s: %d iterations evaluated on %d test sets", spec.name, budget, len(self.test_sets))
        if selection_pending:
            state = latest_training_state(models)
            selection = best_model_record(state) if state is not None else None
            if selection is None or not (models / SELECTED_MODEL).is_file():
                logger.warning("%s: no validation ran in %d epochs, so the run selected no model (val_interval)",
                               spec.name, self.epochs)  # fmt: skip
                return record
            selected = {k: selection[k] for k in ("epoch", "iteration", "val_dice")}
            record = self.ledger.write_record(spec, selected=selected)
            record = self._evaluate(spec, models / SELECTED_MODEL, SELECTED, record)
            logger.info("%s: the model selected by validation (epoch %d, %d iterations, validation Dice %.4f) "
                        "evaluated on %d test sets", spec.name, selected["epoch"], selected["iteration"],
                        selected["val_dice"], len(self.test_sets))  # fmt: skip
        return record

    def _finished(self, models: Path) -> bool:
        """Whether the run trained every epoch (so its validation-selected model is final)."""
        state = latest_training_state(models)
        return state is not None and (state_epoch(state) or 0) >= self.epochs and (models / SELECTED_MODEL).is_file()

    def _evaluate(self, spec: RunSpec, ckpt: Path, checkpoint: int | str, record: dict[str, Any]) -> dict[str, Any]:
        """Evaluate one model of a run on every test set; its per-volume rows go to the ledger."""
        eval_dir = self.run_root / spec.key / "eval" / checkpoint_stem(checkpoint)
        cmd = evaluation_command(self.bundle, ckpt, eval_dir, self.test_sets, spec.arm,
                                 {**self.overrides, **self.eval_overrides})  # fmt: skip
        wall, cpu = run_logged(cmd, self.run_root / spec.key / "eval.log", self.bundle, self.threads)
        rows = read_csv(eval_dir / "volumes.csv")
        columns = [c for c in (*METRIC_KEYS, *QUALITY_KEYS) if c in rows[0]]
        with self._lock:
            self.ledger.write_evaluation(spec, self.eval_key, self.evaluation, checkpoint, rows, columns)
            return self.ledger.write_record(spec, eval_s=record.get("eval_s", 0.0) + wall,
                                            eval_cpu_s=record.get("eval_cpu_s", 0.0) + cpu)  # fmt: skip

    def status(self) -> list[dict[str, Any]]:
        """How far every run has come: budgets and the validation-selected model evaluated (ledger), models saved and
        the last epoch trained (run folder on this machine), one dict per run in :meth:`specs` order."""
        rows = []
        for spec in self.specs():
            models = self.run_root / spec.key / "models"
            state = latest_training_state(models)
            rows.append({
                "run": spec.name, "key": spec.key,
                "evaluated": sorted(set(self.ledger.evaluated_iterations(spec, self.eval_key))),
                "selected": self.ledger.has_selected(spec, self.eval_key),
                "saved": [b for b in self.budgets if (models / SaveAtIterations.filename(b)).is_file()],
                "epoch": state_epoch(state) if state is not None else 0,
            })  # fmt: skip
        return rows

    def status_table(self) -> str:
        """:meth:`status` as a Markdown table."""
        lines = [f"| run | ledger key | evaluated of {self.budgets} | selected model evaluated | models saved | "
                 f"epochs trained of {self.epochs} |", "|---|---|---|---|---|---|"]  # fmt: skip
        for row in self.status():
            done = "all" if len(row["evaluated"]) == len(self.budgets) else str(row["evaluated"] or "none")
            selected = "yes" if row["selected"] else "no"
            lines.append(f"| {row['run']} | {row['key']} | {done} | {selected} | {row['saved'] or 'none'} | "
                         f"{row['epoch']} |")  # fmt: skip
        return "\n".join(lines)

    def run_all(self, jobs: int = 1) -> dict[str, str]:
        """Run every pending run, ``jobs`` at a time; return ``{run name: error}`` for the runs that failed.

        A failed run does not stop the others: its error (naming its log) is logged when it happens and returned, and
        the same command retries it. An interrupt (Ctrl-C) starts nothing new and waits for the runs under way.
        """
        specs = self.specs()
        logger.info(
            "%d runs x %d budgets (%s iterations; %d epochs of %d iterations), %d at a time, %s thread(s) each",
            len(specs), len(self.budgets), self.budgets, self.epochs, self.iterations_per_epoch, jobs,
            self.threads or "default",
        )  # fmt: skip
        failed: dict[str, str] = {}
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            futures = {pool.submit(self.run, spec): spec for spec in specs}
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
    parser.add_argument("--protocol", choices=list(PROTOCOLS), default="default", help="preset of the settings below")
    parser.add_argument("--tag", default=None, help="results folder name (default: synthetic_<protocol>, or real)")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default: the protocol's")
    parser.add_argument("--budgets", type=int, nargs="+", default=None, help="iterations (default: the protocol's)")
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


def _setup(args: argparse.Namespace) -> dict[str, Any]:
    """Data, test sets and the settings of the chosen protocol, from the command line."""
    protocol = PROTOCOLS[args.protocol]
    overrides = {**protocol["overrides"], **dict(args.override)}
    if args.device:
        overrides["device"] = f"$torch.device('{args.device}')"
    setup: dict[str, Any] = {
        "seeds": args.seeds or protocol["seeds"],
        "budgets": args.budgets or protocol["budgets"],
        "overrides": overrides,
        "eval_overrides": {**protocol["eval_overrides"], **dict(args.eval_override)},
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
    setup = _setup(args)
    results_dir = Path(args.results_dir)
    threads = args.threads or (max(1, (os.cpu_count() or 1) // args.jobs) if args.jobs > 1 else None)
    experiment = Experiment(
        setup["tag"], args.arms, setup["seeds"], setup["budgets"], setup["dataset_dir"], setup["datalist"],
        setup["test_sets"], setup["overrides"], setup["eval_overrides"], results_dir, Path(args.run_dir),
        setup["fingerprint"], threads,
    )  # fmt: skip
    if args.status:
        print(experiment.status_table())
        return 0
    failed = {} if args.report_only else experiment.run_all(args.jobs)
    from .report import write_report

    if setup.get("suite") is not None:
        from .domains import preview_domains

        preview_domains(setup["suite"], results_dir / setup["tag"] / "domains.png")
    written = write_report(
        experiment.ledger, results_dir / setup["tag"], experiment.eval_key, setup["in_domain"],
        [n for n in setup["test_sets"] if n != setup["in_domain"]], setup["groups"], args.arms, experiment.budgets,
        context={"command": "python -m tools.robustness " + " ".join(argv if argv is not None else sys.argv[1:]),
                 "protocol": args.protocol, "overrides": setup["overrides"], "eval_overrides": setup["eval_overrides"],
                 "descriptions": setup.get("descriptions", {}), "epochs": experiment.epochs,
                 "iterations_per_epoch": experiment.iterations_per_epoch},
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
