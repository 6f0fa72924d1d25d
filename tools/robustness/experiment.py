"""The robustness experiment: standard vs cooperative training, same budget and seeds, evaluated on every domain.

For each seed, the bundle's own training workflow runs twice with overrides (``--latent_da False``: the paper's
standard training; ``--latent_da True``: cooperative training with latent space data augmentation), each into its
own run folder (``<run_dir>/<tag>/<method>_seed<k>/models``, ``logs``; never the bundle's ``models/``). Each best
checkpoint is then evaluated by ``evaluate.json`` on every test set. The combined per-volume table, the paper-shaped
tables (mean ± sd over seeds), box plots and a short text go to ``<results_dir>/<tag>_*``. Runs are subprocesses,
two at a time with one torch thread each by default (``--jobs``, ``--threads``).

Without dataset arguments it runs on the synthetic domain-shift suite (:mod:`scripts.data.domains`), generated once
and cached. Real data take the same command with other arguments. From the repository root::

    PYTHONPATH=bundle python -m tools.robustness                      # synthetic suite, default budget
    PYTHONPATH=bundle python -m tools.robustness --tag acdc --dataset_dir /data/ACDC_coopseg \\
        --datalist /data/ACDC_coopseg/datalist_fewshot_cval0.json --in_domain ACDC \\
        --test_set ACDC=/data/ACDC_coopseg/datalist.json#test --test_set MM=/data/MnM_coopseg/datalist.json#test \\
        --test_set RandomBias=/data/ACDC-C/datalist.json#RandomBias ... \\
        --epochs 600 --override crop_size=192 --override batch_size=10 --override learning_rate=0.0001

Finished runs are reused when the script is started again with the same arguments (``--fresh`` retrains).
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from scripts import bundle_root
from scripts.evaluation.report import (
    box_plot,
    fmt,
    paper_table,
    read_csv,
    seed_summary,
    seed_table,
    write_csv,
)

from ..machine import cpu_model

__all__ = ["DEFAULT_BUDGET", "METHODS", "evaluation_command", "main", "training_command"]

logger = logging.getLogger(__name__)

METHODS = {"standard": False, "cooperative": True}  # method -> latent_da
METHOD_LABELS = {"standard": "Standard training", "cooperative": "Cooperative training"}
# Default budget of the synthetic suite, chosen to finish in about 40 minutes on a 2-core CPU (both methods, three
# seeds, every evaluation); see docs/evaluation.md for the measurement behind it.
DEFAULT_BUDGET = {"epochs": 3, "train_subjects": 24, "val_subjects": 4, "test_subjects": 8}
CRITERION = {"shifted_gain": 0.05, "in_domain_loss": 0.01}


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
    bundle: Path,
    run: Path,
    dataset_dir: str,
    datalist: str,
    seed: int,
    latent_da: bool,
    epochs: int,
    overrides: Mapping[str, Any],
) -> list[str]:
    """``python -m monai.bundle run training`` with this run's overrides (outputs inside ``run``)."""
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "training",
        "--config_file",
        str(bundle / "configs" / "train.json"),
        "--bundle_root",
        str(bundle),
        "--dataset_dir",
        dataset_dir,
        "--datalist",
        datalist,
        "--seed",
        str(seed),
        "--latent_da",
        repr(latent_da),
        "--epochs",
        str(epochs),
        "--ckpt_dir",
        str(run / "models"),
        "--output_dir",
        str(run / "logs"),
    ]
    for key, value in overrides.items():
        cmd += [f"--{key}", _cli_value(value)]
    return cmd


def evaluation_command(
    bundle: Path, run: Path, test_sets: Mapping[str, str], model_name: str, overrides: Mapping[str, Any]
) -> list[str]:
    """``python -m monai.bundle run evaluating`` on train.json + evaluate.json for this run's best checkpoint."""
    configs = [str(bundle / "configs" / "train.json"), str(bundle / "configs" / "evaluate.json")]
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "evaluating",
        "--config_file",
        repr(configs),
        "--bundle_root",
        str(bundle),
        "--ckpt_path",
        str(run / "models" / "model.pt"),
        "--eval_dir",
        str(run / "eval"),
        "--model_name",
        model_name,
        "--test_sets",
        repr(dict(test_sets)),
    ]
    for key, value in overrides.items():
        cmd += [f"--{key}", _cli_value(value)]
    return cmd


def run_logged(cmd: Sequence[str], log_path: Path, bundle: Path, threads: int | None = None) -> tuple[float, float]:
    """Run ``cmd`` with its output in ``log_path``; return (wall, CPU) seconds; raise naming the log on failure.

    ``threads`` sets the child's OpenMP/MKL thread count (torch's intra-op threads); None keeps torch's default. The
    CPU time (user + system of that child, all its threads) measures the work independently of other load.
    """
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(bundle), os.environ.get("PYTHONPATH")) if p)}
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    start = time.time()
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        process = subprocess.Popen(list(cmd), stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(process.pid, 0)  # this child's own resource usage, even with runs in parallel
        process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-25:])
        raise RuntimeError(f"command failed (exit {process.returncode}); full log: {log_path}\n{tail}")
    return time.time() - start, usage.ru_utime + usage.ru_stime


def _train_run(
    bundle: Path, run: Path, train_cmd: list[str], eval_cmd: list[str], fresh: bool, threads: int | None = None
) -> dict[str, Any]:
    """Train one (method, seed) unless a run with identical commands trained (or finished) earlier.

    Returns the run's record (``run/run.json``): commands, ``trained``, ``done``, wall and CPU seconds, ``reused``.
    """
    run.mkdir(parents=True, exist_ok=True)
    record_path = run / "run.json"
    if not fresh and record_path.is_file():
        record = json.loads(record_path.read_text())
        same = record.get("train_command") == train_cmd[1:] and record.get("eval_command") == eval_cmd[1:]
        if same and record.get("done") and (run / "eval" / "volumes.csv").is_file():
            logger.info("%s: finished earlier, reusing it (--fresh retrains).", run.name)
            return {**record, "reused": True}
        if same and record.get("trained") and (run / "models" / "model.pt").is_file():
            logger.info("%s: trained earlier, evaluating it (--fresh retrains).", run.name)
            return {**record, "reused": False}
    record: dict[str, Any] = {
        "train_command": train_cmd[1:],
        "eval_command": eval_cmd[1:],
        "trained": False,
        "done": False,
    }
    record_path.write_text(json.dumps(record, indent=1))
    record["train_s"], record["train_cpu_s"] = run_logged(train_cmd, run / "train.log", bundle, threads)
    if not (run / "models" / "model.pt").is_file():
        raise RuntimeError(f"training wrote no {run / 'models' / 'model.pt'}; see {run / 'train.log'}")
    record["trained"] = True
    record_path.write_text(json.dumps(record, indent=1))
    return {**record, "reused": False}


def _evaluate_run(
    bundle: Path, run: Path, record: dict[str, Any], eval_cmd: list[str], threads: int | None = None
) -> dict[str, Any]:
    """Evaluate a trained run (``record`` from :func:`_train_run`) unless it finished earlier."""
    if record.get("done"):
        return record
    record["eval_s"], record["eval_cpu_s"] = run_logged(eval_cmd, run / "eval.log", bundle, threads)
    record["done"] = True
    (run / "run.json").write_text(json.dumps({k: v for k, v in record.items() if k != "reused"}, indent=1))
    return record


def write_results(
    rows: list[dict[str, Any]],
    results_dir: Path,
    tag: str,
    test_sets: Sequence[str],
    in_domain: str,
    context: Mapping[str, Any],
) -> dict[str, Path]:
    """The experiment's outputs: ``<tag>_volumes.csv``, ``<tag>_robustness.md``, ``<tag>_summary.txt``,
    ``<tag>_summary.json``, ``<tag>_dice.png`` and ``<tag>_hd95.png``."""
    results_dir.mkdir(parents=True, exist_ok=True)
    methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
    written = {"csv": write_csv(rows, results_dir / f"{tag}_volumes.csv")}
    summaries = {out: seed_summary(rows, test_sets, in_domain, methods, output=out) for out in ("ftn_stn", "ftn")}
    hd95 = seed_summary(rows, test_sets, in_domain, methods, metric="hd95_mean", output="ftn_stn")
    groups = {m: METHOD_LABELS[m] for m in methods}
    written["dice_png"] = box_plot(
        rows,
        "dice_mean",
        results_dir / f"{tag}_dice.png",
        test_sets,
        group_key="method",
        groups=groups,
        output="ftn_stn",
        ylabel="Dice (FTN+STN)",
        title="Dice per volume, all seeds (mean of LV, MYO, RV)",
    )
    written["hd95_png"] = box_plot(
        rows,
        "hd95_mean",
        results_dir / f"{tag}_hd95.png",
        test_sets,
        group_key="method",
        groups=groups,
        output="ftn_stn",
        ylabel="HD95 (mm, FTN+STN)",
        title="HD95 per volume, all seeds (mean of LV, MYO, RV)",
    )

    text = summary_text(summaries["ftn_stn"], summaries["ftn"], context)
    written["txt"] = results_dir / f"{tag}_summary.txt"
    written["txt"].write_text(text + "\n")
    written["json"] = results_dir / f"{tag}_summary.json"
    written["json"].write_text(json.dumps({"context": dict(context), "dice": summaries, "hd95": hd95}, indent=1))

    seeds = sorted({str(r["seed"]) for r in rows}, key=lambda s: (len(s), s))
    md = [
        f"# Robustness: standard vs cooperative training ({tag})",
        "",
        f"{len(seeds)} seeds ({', '.join(seeds)}) per method, identical budget and data. In-domain test set: "
        f"`{in_domain}`; shifted: {', '.join(f'`{s}`' for s in test_sets if s != in_domain)}. Scores are mean Dice "
        "per 3D volume (LV, MYO, RV averaged), averaged over each test set's volumes; ± is the standard deviation "
        "over seeds. Δ rows are paired by seed.",
        "",
        "```",
        text,
        "```",
        "",
        "## Dice, FTN+STN (the paper's final prediction)",
        "",
        seed_table(summaries["ftn_stn"], test_sets, METHOD_LABELS),
        "",
        "## Dice, FTN alone",
        "",
        seed_table(summaries["ftn"], test_sets, METHOD_LABELS),
        "",
        "## The paper's table shape (per-set columns FTN, all seeds pooled)",
        "",
        paper_table(rows, test_sets, row_key="method", row_order=methods, row_labels=METHOD_LABELS),
        "",
        "## HD95 (mm), FTN+STN",
        "",
        seed_table(hd95, test_sets, METHOD_LABELS, digits=2),
        "",
        f"![Dice per volume]({written['dice_png'].name})",
        "",
        f"![HD95 per volume]({written['hd95_png'].name})",
        "",
        "## Setup",
        "",
        *[f"- {k}: {v}" for k, v in context.items() if k != "domains"],
    ]
    if context.get("domains"):
        md += ["", "## Test domains", "", *[f"- `{k}`: {v}" for k, v in context["domains"].items()]]
    written["md"] = results_dir / f"{tag}_robustness.md"
    written["md"].write_text("\n".join(md) + "\n")
    return written


def summary_text(ftn_stn: Mapping[str, Any], ftn: Mapping[str, Any], context: Mapping[str, Any]) -> str:
    """A few lines: in-domain and shifted-average Dice per method (mean ± sd over seeds, range), the paired
    differences and whether the issue's criterion (>= +0.05 shifted, >= -0.01 in-domain, FTN+STN) is met."""
    lines = []
    for label, summary in (("FTN+STN", ftn_stn), ("FTN", ftn)):
        for method, stats in summary["groups"].items():
            ind, shf = stats["in_domain"], stats["shifted_avg"]
            lines.append(
                f"{label:8s} {METHOD_LABELS.get(method, method):22s} in-domain {fmt(ind['mean'], ind['sd'])} "
                f"[{ind['min']:.3f}, {ind['max']:.3f}]   shifted avg {fmt(shf['mean'], shf['sd'])} "
                f"[{shf['min']:.3f}, {shf['max']:.3f}]   (n = {shf['n']} seeds)"
            )
    coop = ftn_stn["groups"].get("cooperative", {})
    delta = coop.get("delta_vs_standard")
    if delta:
        gain, loss = delta["shifted_avg"], delta["in_domain"]
        met = gain["mean"] >= CRITERION["shifted_gain"] and loss["mean"] >= -CRITERION["in_domain_loss"]
        lines.append(
            f"Cooperative - standard (FTN+STN, paired by seed): shifted {gain['mean']:+.3f} ± {gain['sd']:.3f} "
            f"[{gain['min']:+.3f}, {gain['max']:+.3f}], in-domain {loss['mean']:+.3f} ± {loss['sd']:.3f} "
            f"[{loss['min']:+.3f}, {loss['max']:+.3f}]"
        )
        lines.append(
            f"Criterion (shifted >= +{CRITERION['shifted_gain']:.2f}, in-domain >= -{CRITERION['in_domain_loss']:.2f}):"
            f" {'MET' if met else 'NOT MET'}"
        )
    if context.get("wall_time_min") is not None:
        lines.append(f"Wall time {context['wall_time_min']:.1f} min; budget: {context.get('budget', '')}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tools.robustness",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    root = Path(bundle_root())
    parser.add_argument("--run_dir", default=str(root / "runs" / "robustness"), help="run folders (checkpoints, logs)")
    parser.add_argument("--results_dir", default=str(root.parent / "docs" / "results"), help="where results go")
    parser.add_argument("--tag", default=None, help="results file prefix (default: synthetic, or real)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--epochs", type=int, default=DEFAULT_BUDGET["epochs"], help="training epochs per run")
    parser.add_argument(
        "--override",
        type=parse_override,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="bundle override for training and evaluation, e.g. crop_size=192 (repeatable)",
    )
    parser.add_argument("--fresh", action="store_true", help="retrain runs that finished earlier")
    parser.add_argument(
        "--jobs",
        type=int,
        default=2,
        help="runs at a time; single-thread runs side by side use 2 cores without thread contention",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads per run (OMP_NUM_THREADS; default: CPUs / jobs when --jobs > 1)",
    )
    synthetic = parser.add_argument_group("synthetic domain-shift suite (used when --dataset_dir is not given)")
    synthetic.add_argument("--train_subjects", type=int, default=DEFAULT_BUDGET["train_subjects"])
    synthetic.add_argument("--val_subjects", type=int, default=DEFAULT_BUDGET["val_subjects"])
    synthetic.add_argument(
        "--test_subjects",
        type=int,
        default=DEFAULT_BUDGET["test_subjects"],
        help="test subjects per domain (the same subjects in every domain)",
    )
    synthetic.add_argument("--data_seed", type=int, default=0)
    synthetic.add_argument("--domains", nargs="+", default=None, help="domain names (default: all)")
    synthetic.add_argument("--copies", type=int, default=1, help="artefact copies per test volume")
    synthetic.add_argument("--cache_dir", default=None, help="suite cache (default: $COOPSEG_CACHE_DIR or ~/.cache)")
    real = parser.add_argument_group("real data")
    real.add_argument("--dataset_dir", default=None, help="training data root (e.g. scripts.data.acdc output)")
    real.add_argument("--datalist", default=None, help="training datalist (default: <dataset_dir>/datalist.json)")
    real.add_argument(
        "--test_set", action="append", default=[], metavar="NAME=DATALIST[#KEY]", help="a named test set (repeatable)"
    )
    real.add_argument("--in_domain", default=None, help="the in-domain test set (default: source / the first)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    start = time.time()
    bundle = Path(bundle_root())
    overrides = dict(args.override)
    context: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{os.cpu_count()} CPUs, {cpu_model()}",
        "command": "python -m tools.robustness " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    if args.dataset_dir:
        if not args.test_set:
            raise SystemExit("--dataset_dir needs at least one --test_set NAME=DATALIST[#KEY].")
        dataset_dir = str(Path(args.dataset_dir).resolve())
        datalist = str(Path(args.datalist).resolve()) if args.datalist else str(Path(dataset_dir) / "datalist.json")
        test_sets = {}
        for spec in args.test_set:
            name, _, path = spec.partition("=")
            if not path:
                raise SystemExit(f"--test_set {spec!r}: expected NAME=DATALIST[#KEY].")
            test_sets[name] = path
        in_domain = args.in_domain or next(iter(test_sets))
        tag = args.tag or "real"
        context["budget"] = f"{args.epochs} epochs; overrides {overrides or 'none'}"
    else:
        from .domains import ensure_domain_suite, preview_domains

        suite = ensure_domain_suite(
            args.cache_dir,
            args.train_subjects,
            args.val_subjects,
            args.test_subjects,
            args.data_seed,
            args.domains,
            args.copies,
        )
        dataset_dir, datalist = str(suite), str(suite / "datalist.json")
        content = json.loads((suite / "datalist.json").read_text())
        test_sets = {name: f"{datalist}#{name}" for name in content["domains"]}
        in_domain = "source"
        tag = args.tag or "synthetic"
        context["budget"] = (
            f"{args.epochs} epochs, {args.train_subjects} training / {args.val_subjects} validation "
            f"subjects (ED + ES), {args.test_subjects} test subjects per domain; overrides "
            f"{overrides or 'none'}"
        )
        context["data"] = f"synthetic domain-shift suite {suite.name}"
        context["domains"] = content["domains"]
        preview_domains(suite, Path(args.results_dir) / f"{tag}_domains.png")
    if in_domain not in test_sets:
        raise SystemExit(f"--in_domain {in_domain!r} is not one of the test sets {list(test_sets)}.")

    run_root = Path(args.run_dir) / tag
    # longest first (cooperative runs cost about twice as much), so parallel workers finish together
    jobs = sorted(
        ((seed, method) for seed in args.seeds for method in args.methods),
        key=lambda job: (job[1] != "cooperative", args.seeds.index(job[0])),
    )
    threads = args.threads or (max(1, (os.cpu_count() or 1) // args.jobs) if args.jobs > 1 else None)
    logger.info("%d runs, %d at a time, %s torch thread(s) each", len(jobs), args.jobs, threads or "default")
    progress = {"done": 0, "seconds": 0.0}
    lock = threading.Lock()
    evaluations: dict[tuple[int, str], Future] = {}

    def commands(seed: int, method: str) -> tuple[Path, list[str], list[str]]:
        run = run_root / f"{method}_seed{seed}"
        train_cmd = training_command(bundle, run, dataset_dir, datalist, seed, METHODS[method], args.epochs, overrides)
        return run, train_cmd, evaluation_command(bundle, run, test_sets, method, overrides)

    def evaluate(job: tuple[int, str], record: dict[str, Any]) -> dict[str, Any]:
        seed, method = job
        run, _, eval_cmd = commands(seed, method)
        record = _evaluate_run(bundle, run, record, eval_cmd, threads)
        with lock:
            progress["done"] += 1
            if not record["reused"]:
                progress["seconds"] += record.get("train_s", 0) + record["eval_s"]
            left = (len(jobs) - progress["done"]) * progress["seconds"] / progress["done"] / max(1, args.jobs) / 60
            logger.info(
                "[%d/%d] %s, seed %d done: training %.1f min, evaluation %.1f min%s; about %.0f min left",
                progress["done"],
                len(jobs),
                method,
                seed,
                record.get("train_s", 0) / 60,
                record.get("eval_s", 0) / 60,
                " (reused)" if record["reused"] else "",
                left,
            )
        return record

    def train(job: tuple[int, str]) -> None:
        seed, method = job
        run, train_cmd, eval_cmd = commands(seed, method)
        logger.info("%s, seed %d: training in %s", method, seed, run)
        record = _train_run(bundle, run, train_cmd, eval_cmd, args.fresh, threads)
        # queued behind the remaining trainings: short evaluations fill the workers' idle time at the end
        evaluations[job] = pool.submit(evaluate, job, record)

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        try:
            for future in [pool.submit(train, job) for job in jobs]:
                future.result()
            records = {job: evaluations[job].result() for job in jobs}
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)  # start nothing new; finished runs are reused next time
            raise
    rows: list[dict[str, Any]] = []
    for seed in args.seeds:
        for method in args.methods:
            record = records[(seed, method)]
            run = run_root / f"{method}_seed{seed}"
            rows += [{**r, "method": method, "seed": seed} for r in read_csv(run / "eval" / "volumes.csv")]
            context[f"time_{method}_seed{seed}"] = (
                f"training {record.get('train_s', 0) / 60:.1f} min (CPU {record.get('train_cpu_s', 0) / 60:.1f} min), "
                f"evaluation {record.get('eval_s', 0) / 60:.1f} min (CPU {record.get('eval_cpu_s', 0) / 60:.1f} min)"
                + (" (reused)" if record["reused"] else "")
            )
    context["parallel"] = f"{args.jobs} run(s) at a time, {threads or 'default'} torch thread(s) each"
    context["wall_time_min"] = round((time.time() - start) / 60, 1)
    written = write_results(rows, Path(args.results_dir), tag, list(test_sets), in_domain, context)
    print(written["txt"].read_text())
    for path in written.values():
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
