# Copyright (c) CoopSeg contributors.
# Licensed under the Apache License, Version 2.0.
"""The field-of-view study: which training window makes whole-slice deployment work, measured on the main job.

Each variant is the README's main job (train.json's defaults on the synthetic phantom: 30 training subjects; 5
validation subjects, the main job's number when the study ran) with a few overrides, followed by the evaluation of
its ``model.pt`` on the 20 source test subjects through the deployment path (whole slices, as the inference workflow
and the app segment them). A finished variant writes
``docs/results/field_of_view/<variant>.json`` (training cost, validation Dice per epoch, test metrics of FTN, FTN + STN
and FTN + STN + clean-up); ``README.md`` there is rebuilt from those files. Started again, finished variants are
skipped, so the study resumes on any machine. Checkpoints and logs stay in ``bundle/runs/field_of_view/`` (git-ignored).

    nice -n 19 python -m tools.field_of_view                      # every variant
    nice -n 19 python -m tools.field_of_view --variants whole_96  # some of them
    python -m tools.field_of_view --cleanup whole_96              # which label clean-up helps, on validation
    python -m tools.field_of_view --report_only

``--cleanup`` scores a variant's ``model.pt`` on the main job's validation subjects with each combination of the
label clean-up switches of ``inference.json`` (largest connected component, hole filling): the measurement that
decides which switch is on by default (on only where validation shows it helps).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BUNDLE = REPO / "bundle"
sys.path.insert(0, str(BUNDLE))

import numpy as np  # noqa: E402
from monai.bundle import ConfigParser  # noqa: E402
from monai.transforms import LoadImage  # noqa: E402

from scripts.data.datalist import ensure_synthetic_dataset  # noqa: E402
from scripts.engine.checkpoints import latest_training_state, state_epoch  # noqa: E402
from scripts.figures import pyplot, save_figure  # noqa: E402
from scripts.files import write_json_atomic, write_text_atomic  # noqa: E402
from scripts.inference.deployment import DeploymentConfig, config_value  # noqa: E402
from scripts.labels import LABELS  # noqa: E402
from scripts.weights import load_weights  # noqa: E402
from tools.machine import cpu_model  # noqa: E402
from tools.robustness.experiment import evaluation_command, run_logged, training_command  # noqa: E402

logger = logging.getLogger("field_of_view")

RESULTS = REPO / "docs" / "results" / "field_of_view"
# the phantom split every variant trains, validates and is tested on (the main job's, before it validated on 20
# subjects): the variants stay comparable with one another
STUDY_SPLIT = {"training": 30, "validation": 5, "test": 20}
RUNS = BUNDLE / "runs" / "field_of_view"

VARIANTS: dict[str, dict[str, Any]] = {
    "centre_96": {
        "what": "the reference's window: slices padded to 112 px, augmented, centre crop of 96 px at 1.367 mm (131 mm)",
        "overrides": {"sampling": "centre", "empty_slices": "replace"},
    },
    "whole_96": {
        "what": "96 px patches at 1.367 mm (131 mm) drawn over the whole slice, half centred on the heart",
        "overrides": {"sampling": "whole_slice", "empty_slices": "replace"},
    },
    "whole_2mm_64": {
        "what": "64 px patches at 2 mm (128 mm) drawn over the whole slice, half centred on the heart",
        "overrides": {"sampling": "whole_slice", "empty_slices": "replace", "pixdim": [2.0, 2.0, -1], "crop_size": 64},
    },
    "whole_96_6ep": {
        "what": "as whole_96, 6 epochs",
        "overrides": {"sampling": "whole_slice", "empty_slices": "replace"},
        "epochs": 6,
    },
    "whole_96_empty": {
        "what": "as whole_96, and slices without a label (atria above the base, below the apex) trained on as they are",
        "overrides": {"sampling": "whole_slice", "empty_slices": "keep"},
    },
    "whole_96_empty_6ep": {
        "what": "as whole_96_empty, 6 epochs",
        "overrides": {"sampling": "whole_slice", "empty_slices": "keep"},
        "epochs": 6,
    },
}

_METRICS = re.compile(r"Epoch\[(\d+)\] Metrics -- (.*)")


def validation_curve(log_text: str) -> list[dict[str, float]]:
    """Per validated epoch, the ``val_*`` metrics the training log printed."""
    curve = []
    for epoch, text in _METRICS.findall(log_text):
        values = dict(re.findall(r"(val_\w+): ([0-9.]+)", text))
        if values:
            curve.append({"epoch": int(epoch), **{k: float(v) for k, v in values.items()}})
    return curve


def iterations_per_epoch(log_text: str) -> int | None:
    """Iterations per epoch, from the training progress bar (``Epoch [1/3]: [89/89]``)."""
    done = re.findall(r"\]: \[(\d+)/\1\]", log_text)
    return int(done[-1]) if done else None


def run_variant(name: str, spec: Mapping[str, Any], dataset: Path, epochs: int | None) -> dict[str, Any]:
    """Train and evaluate one variant; return its result record."""
    run = RUNS / name
    overrides = dict(spec["overrides"])
    train_log, eval_log = run / "train.log", run / "eval.log"
    resumed = latest_training_state(run / "models")
    resumed_after = state_epoch(resumed) if resumed else None
    # an interrupted run resumes from its last training state; its log keeps the epochs validated before
    for log in (eval_log,) if resumed else (train_log, eval_log):
        log.unlink(missing_ok=True)
    epochs = spec.get("epochs") or epochs or int(config_value(BUNDLE / "configs" / "train.json", "epochs"))
    cmd = training_command(BUNDLE, run, str(dataset), str(dataset / "datalist.json"), 0, epochs,
                           {**overrides, **({"resume": True} if resumed else {})})  # fmt: skip
    load_before = os.getloadavg()[0]
    wall, cpu = run_logged(cmd, train_log, BUNDLE)
    text = train_log.read_text(errors="replace")
    iterations = iterations_per_epoch(text)
    eval_cmd = evaluation_command(BUNDLE, run / "models" / "model.pt", run / "eval",
                                  {"source": f"{dataset / 'datalist.json'}#test"}, name,
                                  {k: v for k, v in overrides.items() if k in ("pixdim",)})  # fmt: skip
    run_logged(eval_cmd, eval_log, BUNDLE)
    summary = json.loads((run / "eval" / "summary.json").read_text())
    rows = _volume_rows(run / "eval" / "volumes.csv")
    return {
        "variant": name,
        "what": spec["what"],
        "overrides": overrides,
        "machine": cpu_model(),
        "load_average_at_start": round(load_before, 2),
        "train_wall_s": round(wall, 1),
        "train_cpu_s": round(cpu, 1),
        "resumed_after_epoch": resumed_after,  # the times then cover the epochs after it only
        "epochs": epochs,
        "iterations_per_epoch": iterations,
        "validation": validation_curve(text),
        "test": {output: _output_means(rows, output) for output in ("ftn", "ftn_stn", "ftn_stn_post")},
        "test_summary": {k: v for k, v in summary.items() if k != "quality_flag"},
        "finished": time.strftime("%Y-%m-%d %H:%M"),
    }


CLEANUP_SETTINGS = {
    "none": {"keep_largest_component": False, "fill_holes": False},
    "largest component": {"keep_largest_component": True, "fill_holes": False},
    "hole filling": {"keep_largest_component": False, "fill_holes": True},
    "both": {"keep_largest_component": True, "fill_holes": True},
}


def cleanup_comparison(model: Path, datalist: Path, key: str = "validation") -> dict[str, dict[str, float]]:
    """Mean Dice, HD95 and far false positives of FTN + STN over the ``key`` volumes of ``datalist`` with each
    setting of :data:`CLEANUP_SETTINGS`, from one network pass per volume through the deployment pipeline."""
    import numpy as np
    import torch
    from monai.data import MetaTensor
    from monai.data.utils import affine_to_spacing
    from monai.transforms import LoadImage

    from scripts.evaluation.metrics import volume_metrics
    from scripts.inference.deployment import DeploymentConfig
    from scripts.weights import load_weights

    deployment = DeploymentConfig(BUNDLE / "configs" / "inference.json", {"bundle_root": str(BUNDLE)})
    network = ConfigParser.load_config_file(str(BUNDLE / "configs" / "inference.json"))
    parser = ConfigParser(network)
    parser["bundle_root"] = str(BUNDLE)
    net = parser.get_parsed_content("network_def")
    load_weights(net, model, "cpu")
    net.eval()
    pipelines = {name: deployment.label_postprocessing(**switches) for name, switches in CLEANUP_SETTINGS.items()}
    rows: dict[str, list[dict[str, float]]] = {name: [] for name in pipelines}
    for entry in json.loads(datalist.read_text())[key]:
        item = deployment.preprocessing({"image": str(datalist.parent / entry["image"])})
        probabilities = deployment.inferer(item["image"][None], net)[0]
        label = LoadImage(image_only=True)(str(datalist.parent / entry["label"]))
        spacing = [float(v) for v in affine_to_spacing(torch.as_tensor(label.affine), r=3)]
        for name, pipeline in pipelines.items():
            pred = pipeline({"image": item["image"], "pred": MetaTensor(probabilities.clone())})["pred"]
            rows[name].append(volume_metrics(pred[0], label[0] if label.ndim == 4 else label, spacing))
    return {
        name: {m: round(float(np.nanmean([r[m] for r in values])), 4) for m in ("dice_mean", "hd95_mean", "far_all")}
        | {"volumes": len(values)}
        for name, values in rows.items()
    }


def comparison_figure(variants: Sequence[str], image: Path, label: Path, path: Path, slices: int = 3) -> Path:
    """One test volume segmented by each variant's ``model.pt`` through the deployment pipeline: a row per variant
    (FTN + STN with the deployed clean-up), ``slices`` slices from base to apex, the reference outline in white."""
    plt = pyplot()
    deployment = DeploymentConfig(BUNDLE / "configs" / "inference.json", {"bundle_root": str(BUNDLE)})
    parser = ConfigParser(ConfigParser.load_config_file(str(BUNDLE / "configs" / "inference.json")))
    parser["bundle_root"] = str(BUNDLE)
    pipeline = deployment.label_postprocessing()
    picture = np.asarray(LoadImage(image_only=True)(str(image)))
    reference = np.asarray(LoadImage(image_only=True)(str(label)))
    labelled = [k for k in range(reference.shape[-1]) if reference[..., k].any()]
    chosen = [labelled[int(i)] for i in np.linspace(0, len(labelled) - 1, slices)]
    colours = np.zeros((len(LABELS) + 1, 4))
    for lbl in LABELS:
        colours[lbl.code] = [*(c / 255 for c in lbl.color), 0.55]
    fig, axes = plt.subplots(len(variants), slices, figsize=(3.2 * slices, 3.2 * len(variants)), squeeze=False)
    for row, name in enumerate(variants):
        net = parser.get_parsed_content("network_def")
        load_weights(net, RUNS / name / "models" / "model.pt", "cpu")
        net.eval()
        item = deployment.preprocessing({"image": str(image)})
        pred = pipeline({"image": item["image"], "pred": deployment.inferer(item["image"][None], net)[0]})["pred"]
        pred = np.asarray(pred[0])
        for col, k in enumerate(chosen):
            ax = axes[row, col]
            ax.imshow(picture[..., k].T, cmap="gray", origin="lower")
            ax.imshow(colours[pred[..., k].T.astype(int)], origin="lower")
            ax.contour(reference[..., k].T > 0, levels=[0.5], colors="white", linewidths=0.7, origin="lower")
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(name)
    fig.suptitle(f"{image.name}: FTN + STN as deployed (colours), reference outline (white)", fontsize=9)
    return save_figure(fig, path)


def _volume_rows(path: Path) -> list[dict[str, Any]]:
    from scripts.evaluation.report import read_csv

    return read_csv(path)


def _output_means(rows: Sequence[Mapping[str, Any]], output: str) -> dict[str, float]:
    import numpy as np

    keys = [k for k in rows[0] if k.startswith(("dice_", "hd95_", "far_"))]
    subset = [r for r in rows if r["output"] == output]
    return {k: round(float(np.nanmean([float(r[k]) for r in subset])), 4) for k in keys} | {"volumes": len(subset)}


def write_report(records: Sequence[Mapping[str, Any]]) -> Path:
    """``README.md``: one row per variant and output."""
    lines = [
        "# Field of view: which training window makes whole-slice deployment work",
        "",
        "Each variant is the main job (train.json's defaults, 3 epochs on the synthetic phantom) with the overrides "
        "shown; its `model.pt` is evaluated on the 20 source test subjects (40 volumes) through the deployment path: "
        "whole slices, the inference workflow's preprocessing, inferer and label post-processing, metrics on the "
        "input grid. Rebuilt by `python -m tools.field_of_view --report_only` from the JSON files beside it.",
        "",
        "| variant | window | overrides | CPU s / iteration | best validation Dice | output | test Dice | HD95 (mm) | "
        "far false positives |",
        "|---|---|---|---:|---:|---|---:|---:|---:|",
    ]
    for rec in records:
        epochs = rec.get("epochs") or len(rec["validation"])
        timed_epochs = epochs - (rec.get("resumed_after_epoch") or 0)  # a resumed run timed its last epochs only
        iterations = (rec.get("iterations_per_epoch") or 0) * timed_epochs
        per_iter = f"{rec['train_cpu_s'] / iterations:.2f}" if iterations else "n/a"
        best = max((v.get("val_mean_dice", float("nan")) for v in rec["validation"]), default=float("nan"))
        for i, output in enumerate(("ftn", "ftn_stn", "ftn_stn_post")):
            t = rec["test"][output]
            head = ["", "", "", "", ""]
            if i == 0:
                head = [rec["variant"], rec["what"], f"`{json.dumps(rec['overrides'])}`", per_iter, f"{best:.3f}"]
            lines.append("| " + " | ".join(head + [output, f"{t['dice_mean']:.3f}", f"{t['hd95_mean']:.1f}",
                                                  f"{100 * t['far_all']:.1f} %"]) + " |")  # fmt: skip
    lines += ["", f"Machine: {', '.join(sorted({r['machine'] for r in records}))}; CPU seconds are the training "
              "process's own (user + system), so other load on the machine does not inflate them.", "",
              f"![validation Dice per epoch]({learning_curves(records, RESULTS / 'learning_curves.png').name})", "",
              "Validation Dice per epoch (deployment path, the validation subjects): the learning curves. The "
              "schedule (warm-up, then cosine decay to the last epoch) depends on the number of epochs, so a "
              "6-epoch run is not a 3-epoch run continued.", ""]  # fmt: skip
    for path in sorted(RESULTS.glob("cleanup_*.json")):
        rec = json.loads(path.read_text())
        lines += ["", f"## Label clean-up of `{rec['variant']}`, on validation", "",
                  f"FTN + STN of `{rec['variant']}` on the {rec['validation_volumes']} volumes of the main job's "
                  f"validation subjects (`{rec['datalist']}`), each combination of the clean-up switches:", "",
                  "| clean-up | Dice | HD95 (mm) | far false positives |", "|---|---:|---:|---:|"]  # fmt: skip
        for name, m in rec["settings"].items():
            lines.append(f"| {name} | {m['dice_mean']:.4f} | {m['hd95_mean']:.1f} | {100 * m['far_all']:.2f} % |")
    return write_text_atomic(RESULTS / "README.md", "\n".join(lines) + "\n")


def learning_curves(records: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """PNG: each variant's validation mean Dice (FTN + STN, deployed clean-up) against the epoch."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for rec in records:
        epochs = [v["epoch"] for v in rec["validation"]]
        ax.plot(epochs, [v["val_mean_dice"] for v in rec["validation"]], marker="o", label=rec["variant"])
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation mean Dice")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--epochs", type=int, default=None, help="override train.json's epochs for every variant")
    parser.add_argument("--report_only", action="store_true")
    parser.add_argument("--cleanup", choices=list(VARIANTS), help="compare the label clean-up switches on validation")
    parser.add_argument("--figure", nargs="+", choices=list(VARIANTS), help="draw a test volume segmented by these")
    parser.add_argument("--subject", default="te010_ES", help="the test volume of --figure (<subject>_<frame>)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.figure:
        test = ensure_synthetic_dataset(split=STUDY_SPLIT) / "test"
        subject = args.subject.split("_")[0]
        image, label = test / subject / f"{args.subject}.nii.gz", test / subject / f"{args.subject}_gt.nii.gz"
        logger.info("figure: %s", comparison_figure(args.figure, image, label, RESULTS / "whole_slice.png"))
    elif args.cleanup:
        split = config_value(BUNDLE / "configs" / "train.json", "synthetic_split")
        datalist = ensure_synthetic_dataset(split=split) / "datalist.json"
        settings = cleanup_comparison(RUNS / args.cleanup / "models" / "model.pt", datalist)
        subjects = f"phantom, {split['validation']} validation subjects"
        record = {"variant": args.cleanup, "datalist": subjects, "settings": settings,
                  "validation_volumes": next(iter(settings.values()))["volumes"], "machine": cpu_model()}  # fmt: skip
        write_json_atomic(RESULTS / f"cleanup_{args.cleanup}.json", record)
    elif not args.report_only:
        dataset = ensure_synthetic_dataset(split=STUDY_SPLIT)
        for name in args.variants:
            path = RESULTS / f"{name}.json"
            if path.is_file():
                logger.info("%s: done (%s)", name, path)
                continue
            logger.info("%s: training and evaluating ...", name)
            write_json_atomic(path, run_variant(name, VARIANTS[name], dataset, args.epochs))
    records = [json.loads((RESULTS / f"{n}.json").read_text()) for n in VARIANTS if (RESULTS / f"{n}.json").is_file()]
    if records:
        logger.info("report: %s", write_report(records))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
