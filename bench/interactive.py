"""Benchmark: interactive correction with a simulated annotator, and the latency of one refinement through the server.

1. **Simulated annotator** (``scripts.interactive.annotator``) on the synthetic domain-shift suite
   (``tools/robustness/domains.py``): for every slice of the chosen volumes that holds a structure, starting from the
   automatic FTN + STN mask as the inference workflow delivers it (with its label clean-up), the largest error
   region is corrected (a click at its centre, a scribble along its skeleton, or the same stroke painted by hand:
   manual editing, the baseline), the slice refined (``scripts.interactive.session.FrameRefiner``, the code the app
   serves) and its Dice recorded, until Dice 0.90 or 10 interactions. Clicks are sent as the Slicer DeepGrow flow
   sends them (every click so far, on the automatic mask); scribbles as the Slicer scribbles flow does (every
   scribble so far, on the current mask). Per test set: the automatic mask's Dice per volume, mean slice Dice after
   0, 1, 3 and 5 interactions, mean NoI@90 (a slice that does not reach 0.90 counts 10) and the share of slices that
   do not reach it.
2. **Latency** (``--server``): a running MONAI Label server (``apps/coopseg_label`` on 127.0.0.1) over one
   224 x 224 x 10 phantom stack at the bundle's spacing: median seconds per ``/infer/coopseg_clicks`` request (one
   click on one slice) and per ``/infer/coopseg_scribbles`` request (one scribble), through MONAI Label's client,
   the file written and returned, with the server's threads as on the machine.

The tables go to ``--out``: ``results.md`` / ``results.json`` (the simulated annotator) and ``latency.md`` /
``latency.json`` (the server), each with the machine and the command.

    python bench/interactive.py                                  # bundle/models/model.pt, 4 volumes per test set
    python bench/interactive.py --weights other.pt --volumes 20  # every test volume
    python bench/interactive.py --server --sets none             # latency only
    python bench/interactive.py --modes scribble manual region --settings '{"learned": true}' \
        --out docs/results/interactive/learned                   # scribbles with the learned correction
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
BUNDLE = REPO / "bundle"
sys.path[:0] = [str(BUNDLE), str(REPO)]  # the bundle's `scripts`, the repository's `tools`

from scripts.interactive.annotator import (  # noqa: E402
    UNREFINED,
    InteractionCurve,
    mean_dice_after,
    noi,
    seed_map,
    simulate,
)
from scripts.interactive.refinement import RefinementSettings, settings_for  # noqa: E402
from scripts.interactive.session import FrameRefiner, LabelCleanup, label_cleanup  # noqa: E402
from tools.machine import cpu_model  # noqa: E402

logger = logging.getLogger("bench.interactive")

MODES = ("click", "scribble", "manual", "region")
STEPS = (0, 1, 3, 5)
MAX_INTERACTIONS = 10
TARGET = 0.90
SHIFTED_BELOW = 0.70
HEADLINE_KEYS = ("dice_0", "dice_1", "dice_3", "dice_5", "noi90", "missed90")  # the figures a headline averages


def bundle_parser(bundle: Path):
    """The bundle's ``inference.json``, rooted at ``bundle``."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser["bundle_root"] = str(bundle)
    return parser


def load_network(bundle: Path, weights: Path) -> torch.nn.Module:
    """The bundle's ``network_def`` with ``weights`` (strict), in eval mode on the CPU."""
    parser = bundle_parser(bundle)
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return network.eval()


def refinement_settings(bundle: Path, changes: dict[str, Any]) -> dict[str, RefinementSettings]:
    """Per refined mode, the settings the app serves (``inference.json``'s ``interactive_refinement``: ``click`` from
    its ``clicks``, ``scribble`` from its ``scribbles``), with ``changes`` applied to both."""
    config = bundle_parser(bundle).get("interactive_refinement")
    kinds = {"click": "clicks", "scribble": "scribbles"}
    return {mode: dataclasses.replace(settings_for(kind, config), **changes) for mode, kind in kinds.items()}


def volume_dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Mean 3D Dice over LV, myocardium and RV (a structure in neither counts 1)."""
    scores = []
    for label in (1, 2, 3):
        p, t = pred == label, truth == label
        total = int(p.sum()) + int(t.sum())
        scores.append(2.0 * int((p & t).sum()) / total if total else 1.0)
    return float(np.mean(scores))


def run_volume(
    preprocess: Any,
    network: Any,
    entry: dict[str, str],
    suite: Path,
    settings: dict[str, RefinementSettings],
    modes: list[str],
    cleanup: LabelCleanup,
    correction_network: Any = None,
) -> dict[str, Any]:
    """Curves per mode for every slice of one volume, and the automatic mask's volume Dice; ``settings`` per
    refined mode (``click``, ``scribble``); ``cleanup`` the bundle's label clean-up (the automatic mask is the one
    the inference workflow delivers); ``correction_network`` the learned correction, for settings that use it."""
    import nibabel as nib

    image = preprocess({"image": str(suite / entry["image"])})["image"]
    truth = np.asarray(nib.load(str(suite / entry["label"])).dataobj).astype(np.uint8)
    refiner = FrameRefiner.from_preprocessed(image, 0, truth.shape, network, correction_network=correction_network)
    refiner.precompute()
    refiners = {mode: refiner.with_settings(s) for mode, s in settings.items()}  # one FTN + STN pass per volume
    automatic = refiner.automatic_volume(cleanup)
    curves: dict[str, list[InteractionCurve]] = {mode: [] for mode in modes}
    gains: list[tuple[float, int]] = []
    for k in range(truth.shape[2]):
        initial = automatic[..., k]

        def refine(
            mask: np.ndarray, corrections: list, k: int = k, initial: np.ndarray = initial, mode: str = ""
        ) -> Any:
            prior = initial if mode == "click" else mask
            return refiners[mode].refine(k, prior, seed_map(corrections, initial.shape))

        for mode in modes:
            curve = simulate(
                initial,
                truth[..., k],
                mode,
                refine=lambda m, c, mode=mode, refine=refine: refine(m, c, mode=mode),
                max_interactions=MAX_INTERACTIONS,
                target=TARGET,
            )
            if curve is not None:
                curves[mode].append(curve)
                if mode == "scribble" and set(np.unique(truth[..., k])) >= {1, 2, 3}:  # the figure: a whole heart
                    gains.append((curve.dice[1] - curve.dice[0], k))
    return {"automatic_dice": volume_dice(automatic, truth), "curves": curves, "best_slice": max(gains, default=None)}


def pick(entries: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """``n`` entries spread evenly over the list (all when ``n`` is 0 or larger)."""
    if n <= 0 or n >= len(entries):
        return entries
    return [entries[int(i)] for i in np.linspace(0, len(entries) - 1, n).round()]


def summarise(curves: list[InteractionCurve]) -> dict[str, Any]:
    mean_noi, missed = noi(curves, MAX_INTERACTIONS)
    seconds = [s for c in curves for s in c.seconds]
    return {
        "slices": len(curves),
        **{f"dice_{k}": mean_dice_after(curves, k) for k in STEPS},
        "noi90": mean_noi,
        "missed90": missed,
        "median_refine_s": statistics.median(seconds) if seconds else None,
    }


def simulate_sets(args: argparse.Namespace, bundle: Path, weights: Path) -> dict[str, Any]:
    from tools.robustness.domains import ensure_test_domains

    suite = Path(args.suite) if args.suite else ensure_test_domains(None, 10, 0, None, 1)
    datalist = json.loads((suite / "datalist.json").read_text())
    names = [n for n in datalist["domains"] if args.sets == ["all"] or n in args.sets]
    parser = bundle_parser(bundle)
    preprocess = parser.get_parsed_content("preprocessing")
    cleanup = label_cleanup(parser.get_parsed_content("label_postprocessing"))
    network = load_network(bundle, weights)
    settings = refinement_settings(bundle, json.loads(args.settings) if args.settings else {})
    correction = None
    if any(s.learned for s in settings.values()):
        from scripts.interactive.correction_network import load_correction_network

        path = Path(args.correction_weights or bundle / "models" / "correction_net.pt")
        correction = load_correction_network(path)
    results: dict[str, Any] = {}
    best: tuple[float, Any, int] = (-1.0, None, 0)
    for name in names:
        start = time.perf_counter()
        per_mode: dict[str, list[InteractionCurve]] = {m: [] for m in args.modes}
        automatic = []
        for entry in pick(datalist[name], args.volumes):
            got = run_volume(preprocess, network, entry, suite, settings, args.modes, cleanup, correction)
            automatic.append(got["automatic_dice"])
            if name != "source" and got["best_slice"] and got["best_slice"][0] > best[0]:
                best = (got["best_slice"][0], entry, got["best_slice"][1])
            for mode in args.modes:
                per_mode[mode] += got["curves"][mode]
        low = {m: [c for c in curves if c.dice[0] < SHIFTED_BELOW] for m, curves in per_mode.items()}
        results[name] = {
            "volumes": len(automatic),
            "automatic_volume_dice": float(np.mean(automatic)),
            "modes": {mode: summarise(curves) for mode, curves in per_mode.items()},
            "low_slices": {mode: summarise(curves) for mode, curves in low.items() if curves},
        }
        row = results[name]
        logger.info(
            "%s: automatic %.3f; %s (%.0f s)",
            name,
            row["automatic_volume_dice"],
            "; ".join(
                f"{m} "
                + " ".join(f"{row['modes'][m][f'dice_{k}']:.3f}" for k in STEPS)
                + f" NoI {row['modes'][m]['noi90']:.2f}"
                for m in args.modes
            ),
            time.perf_counter() - start,
        )
    report = {"suite": suite.name, "settings": {m: s.__dict__ for m, s in settings.items()}, "sets": results}
    if correction is not None:
        report["correction_weights"] = shown(path)
    if args.figure and best[1] is not None:
        report["figure"] = lambda: example_figure(preprocess, network, best[1], suite, best[2], settings,
                                                  Path(args.figure), cleanup, correction)  # fmt: skip
    return report


def example_figure(
    preprocess: Any,
    network: Any,
    entry: dict[str, str],
    suite: Path,
    k: int,
    settings: dict[str, RefinementSettings],
    path: Path,
    cleanup: LabelCleanup,
    correction_network: Any = None,
) -> None:
    """PNG: slice ``k`` of a volume before, with the first correction of the simulated annotator (a click, a
    scribble) and after its refinement, masks drawn over the image."""
    import nibabel as nib

    from scripts.figures import pyplot, save_figure
    from scripts.interactive.annotator import Correction, click_in, largest_error_region, slice_dice, stroke_along
    from scripts.labels import color_table

    plt = pyplot()

    image = np.asarray(nib.load(str(suite / entry["image"])).dataobj, dtype=np.float32)[:, :, k]
    truth = np.asarray(nib.load(str(suite / entry["label"])).dataobj).astype(np.uint8)
    preprocessed = preprocess({"image": str(suite / entry["image"])})["image"]
    refiner = FrameRefiner.from_preprocessed(preprocessed, 0, truth.shape, network,
                                             correction_network=correction_network)  # fmt: skip
    refiners = {mode: refiner.with_settings(s) for mode, s in settings.items()}
    truth = truth[:, :, k]
    before = refiner.automatic_volume(cleanup)[:, :, k]
    region, label = largest_error_region(before, truth)
    colors = color_table() / 255.0
    low, high = np.percentile(image, [1, 99])
    gray = np.clip((image - low) / max(high - low, 1e-6), 0, 1)[..., None].repeat(3, axis=-1)

    def overlay(mask: np.ndarray) -> np.ndarray:
        out = gray.copy()
        out[mask > 0] = 0.55 * out[mask > 0] + 0.45 * colors[mask[mask > 0]]
        return out

    rows = [
        ("click", Correction(label, click_in(region), "click")),
        ("scribble", Correction(label, stroke_along(region, truth, label), "scribble")),
    ]
    fig, axes = plt.subplots(2, 4, figsize=(12, 6.4))
    for row, (kind, correction) in zip(axes, rows, strict=True):
        after = refiners[kind].refine(k, before, seed_map([correction], before.shape))
        panels = [
            (gray, "image"),
            (overlay(before), f"automatic mask, Dice {slice_dice(before, truth):.2f}"),
            (overlay(before), f"one {kind} ({entry.get('domain', '')})"),
            (overlay(after), f"refined, Dice {slice_dice(after, truth):.2f}"),
        ]
        for ax, (picture, title) in zip(row, panels, strict=True):
            ax.imshow(picture, interpolation="nearest")
            ax.set_title(title, fontsize=9)
            ax.axis("off")
        pixels = correction.pixels
        marker = dict(s=60, marker="o", edgecolors="white") if kind == "click" else dict(s=4, marker="s")
        row[2].scatter(pixels[:, 1], pixels[:, 0], c=[colors[correction.label] if correction.label else (1, 1, 1)],
                       **marker)  # fmt: skip
    fig.suptitle(
        "LV red, myocardium green, RV blue; a click or scribble is drawn in the colour of the label it gives "
        "(white: background)",
        fontsize=9,
    )
    logger.info("figure: %s", save_figure(fig, path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default=str(BUNDLE), help="bundle folder (configs, scripts)")
    parser.add_argument("--weights", default=None, help="state dict (default: <bundle>/models/model.pt)")
    parser.add_argument("--suite", default=None, help="test-domain suite folder (default: generated and cached)")
    parser.add_argument("--sets", nargs="+", default=["all"], help="test sets ('all', or names; 'none' for none)")
    parser.add_argument("--volumes", type=int, default=4, help="volumes per test set, spread over it (0: all)")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--settings", default="", help="JSON of RefinementSettings fields to change")
    parser.add_argument(
        "--correction_weights",
        default="",
        help="the learned correction, for settings with learned: true (default: the bundle's)",
    )
    parser.add_argument("--server", action="store_true", help="also time refinements through a MONAI Label server")
    parser.add_argument("--repeats", type=int, default=10, help="timed server requests per model")
    parser.add_argument("--out", default=str(REPO / "docs" / "results" / "interactive"), help="results folder")
    parser.add_argument("--figure", default="", help="also draw one correction (before, click/scribble, after) here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    bundle = Path(args.bundle).resolve()
    weights = Path(args.weights).resolve() if args.weights else bundle / "models" / "model.pt"
    machine = (
        f"{cpu_model()}, {os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"{platform.system()}"
    )
    print(f"machine: {machine}; load average {os.getloadavg()[0]:.2f}")
    head: dict[str, Any] = {"machine": machine, "command": " ".join(["python", *sys.argv]), "weights": shown(weights)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    parts = []
    if args.sets != ["none"]:
        parts.append(("results", {**head, **simulate_sets(args, bundle, weights)}))
    if args.server:
        parts.append(("latency", {**head, "latency": server_latency(bundle, weights, args.repeats)}))
    figures = [report.pop("figure") for _, report in parts if "figure" in report]
    for name, report in parts:
        (out / f"{name}.json").write_text(json.dumps(report, indent=1))
        text = render(report)
        (out / f"{name}.md").write_text(text)
        print(text)
    for draw in figures:  # after the tables: a figure that fails loses no results
        draw()


def shown(weights: Path) -> str:
    """How a report names a weights file: its path inside the repository (else its name) and its SHA-256 prefix."""
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:12]
    try:
        name = str(weights.resolve().relative_to(REPO))
    except ValueError:
        name = weights.name
    return f"{name} (sha256 {digest})"


def serving_bundle(root: Path, bundle: Path, weights: Path) -> Path:
    """``root/bundle``: the configs and scripts of ``bundle`` and ``weights`` as ``models/model.pt``."""
    import shutil

    target = root / "bundle"
    shutil.copytree(bundle / "configs", target / "configs")
    shutil.copytree(bundle / "scripts", target / "scripts", ignore=shutil.ignore_patterns("__pycache__"))
    (target / "models").mkdir()
    shutil.copy(weights, target / "models" / "model.pt")
    return target


def server_latency(bundle: Path, weights: Path, repeats: int) -> dict[str, Any]:
    """Seconds per interactive request through a running server on one 224 x 224 x 10 stack: one click on one slice
    (``coopseg_clicks``, the mask stored by ``save_label``) and one scribble (``coopseg_scribbles``, the label map
    sent with the request); the first request of each model (the image preprocessed, the slice through FTN + STN)
    and the median of the next ``repeats`` (the app keeps both for the image being corrected)."""
    import tempfile

    import nibabel as nib
    from monailabel.client import MONAILabelClient

    from tools.servers import LabelServer, copy_app

    sys.path.insert(0, str(REPO / "bench"))
    from infer import make_inputs

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        inputs = make_inputs(root, 1)
        studies = root / "studies"
        studies.mkdir()
        (inputs / "vol00.nii.gz").rename(studies / "vol00.nii.gz")
        conf = {"bundle_path": str(serving_bundle(root, bundle, weights)), "model_dir": str(root / "app_models")}
        server = LabelServer(copy_app(root / "app"), studies, conf, cwd=root, log=root / "server.log", threads=None)
        try:
            server.wait_ready().wait_idle("scoring")
            client = MONAILabelClient(server.url, tmpdir=str(root))
            mask_file, _ = client.infer("coopseg", "vol00", {"save_label": True})  # the stored automatic mask
            mask_img = nib.load(mask_file)
            mask = np.asarray(mask_img.dataobj).astype(np.uint8)
            k = int(np.argmax((mask == 1).sum(axis=(0, 1)))) if (mask == 1).any() else mask.shape[2] // 2
            i, j = (int(v) for v in np.argwhere(mask[:, :, k] == 1).mean(axis=0)) if (mask == 1).any() else (112, 112)
            label_map = mask.copy()
            label_map[i - 5 : i + 5, j, k] = 5  # a foreground scribble
            scribbles = root / "scribbles.nii.gz"
            nib.save(nib.Nifti1Image(label_map, mask_img.affine), str(scribbles))
            info = [{"name": n, "id": v} for v, n in enumerate(["lv", "myocardium", "rv"], 1)]
            info += [{"name": "background_scribbles", "id": 4}, {"name": "foreground_scribbles", "id": 5}]
            requests = {
                "coopseg_clicks": ({"label": "lv", "foreground": [[i, j, k]], "background": [], "slice": k}, None),
                "coopseg_scribbles": ({"label_info": info, "selected_label_name": "lv"}, str(scribbles)),
            }
            out: dict[str, Any] = {"shape": list(mask.shape), "threads": "library default"}
            for model, (params, label_in) in requests.items():
                start = time.perf_counter()
                client.infer(model, "vol00", dict(params), label_in=label_in)  # the first correction of the image
                first = time.perf_counter() - start
                seconds, refine = [], []
                for _ in range(repeats):
                    start = time.perf_counter()
                    _, result = client.infer(model, "vol00", dict(params), label_in=label_in)
                    seconds.append(time.perf_counter() - start)
                    refine.append(result["latencies"]["refine"])
                out[model] = {
                    "first_s": first,
                    "request_s": statistics.median(seconds),
                    "request_s_max": max(seconds),
                    "refine_s": statistics.median(refine),
                    "repeats": repeats,
                }
                logger.info("%s: %.3f s per request (median of %d)", model, out[model]["request_s"], repeats)
            out["load"] = os.getloadavg()[0]
            return out
        finally:
            server.stop()


MODE_NAMES = {
    "click": "clicks",
    "scribble": "scribbles",
    "manual": "manual editing",
    "region": "whole error region (ceiling)",
}


def headline(sets: dict[str, Any], modes: list[str]) -> tuple[list[str], dict[str, dict[str, float]]]:
    """The shifted test sets whose automatic mask scores below 0.70, and per mode the mean of their figures."""
    chosen = [n for n, r in sets.items() if n != "source" and r["automatic_volume_dice"] < SHIFTED_BELOW]
    means = {
        mode: {k: float(np.mean([sets[n]["modes"][mode][k] for n in chosen])) for k in HEADLINE_KEYS} for mode in modes
    }
    return chosen, means


def low_slice_headline(sets: dict[str, Any], modes: list[str]) -> tuple[int, dict[str, dict[str, float]]]:
    """The slices of the shifted test sets whose automatic mask scores below 0.70 (every set, whatever its volume
    Dice), pooled: their number and per mode the slice-weighted mean of their figures."""
    rows = [r["low_slices"] for n, r in sets.items() if n != "source" and r.get("low_slices")]
    means = {}
    for mode in modes:
        parts = [r[mode] for r in rows if mode in r]
        total = sum(p["slices"] for p in parts)
        means[mode] = {k: sum(p[k] * p["slices"] for p in parts) / total for k in HEADLINE_KEYS} if total else {}
    return sum(r[modes[0]]["slices"] for r in rows if modes[0] in r), means


def headline_table(means: dict[str, dict[str, float]], modes: list[str]) -> list[str]:
    """Markdown rows: per mode Dice after 0, 1, 3, 5 interactions, NoI@90, its ratio to manual editing, missed."""
    manual = means.get("manual", {}).get("noi90")
    lines = [
        "| mode | Dice 0 | Dice 1 | Dice 3 | Dice 5 | NoI@90 | NoI@90 / manual | not reached |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for mode in modes:
        m = means[mode]
        ratio = f"{m['noi90'] / manual:.2f}" if manual else "-"
        lines.append(
            f"| {MODE_NAMES[mode]} | {m['dice_0']:.3f} | {m['dice_1']:.3f} | {m['dice_3']:.3f} | "
            f"{m['dice_5']:.3f} | {m['noi90']:.2f} | {ratio} | {m['missed90']:.0%} |"
        )
    return lines + [""]


def render(report: dict[str, Any]) -> str:
    lines = [
        "# Interactive correction: simulated annotator and latency",
        "",
        f"Machine: {report['machine']}. Weights: `{report['weights']}`.",
        f"Command: `{report['command']}`.",
        "",
    ]
    sets = report.get("sets")
    if sets:
        modes = list(next(iter(sets.values()))["modes"])
        lines += [
            f"Suite: `{report['suite']}`. Refinement settings: `{json.dumps(report['settings'])}`."
            + (f" Learned correction: `{report['correction_weights']}`." if "correction_weights" in report else ""),
            "",
            "Per test set: the automatic FTN + STN mask's Dice per volume (LV, myocardium, RV averaged; the mask the "
            "inference workflow delivers, its label clean-up included), then per "
            "correction mode the mean slice Dice after 0, 1, 3 and 5 interactions, the mean number of interactions "
            f"to reach Dice {TARGET:.2f} (NoI@90; a slice that does not reach it within {MAX_INTERACTIONS} counts "
            f"{MAX_INTERACTIONS}) and the share of slices that do not reach it.",
            "",
        ]
        chosen, means = headline(sets, modes)
        if chosen:
            lines += [
                f"**Shifted test sets whose automatic mask scores below {SHIFTED_BELOW:.2f}** ({len(chosen)}: "
                f"{', '.join(chosen)}), mean over the sets:",
                "",
                *headline_table(means, modes),
            ]
        else:
            lines += [f"No shifted test set's automatic mask scores below {SHIFTED_BELOW:.2f}.", ""]
        n_low, low_means = low_slice_headline(sets, modes)
        if n_low and all(low_means.values()):
            lines += [
                f"**Slices of the shifted test sets whose automatic mask scores below {SHIFTED_BELOW:.2f}** "
                f"({n_low} slices, every shifted set), pooled:",
                "",
                *headline_table(low_means, modes),
            ]
        lines += [
            "| test set | volumes | slices | automatic | mode | Dice 0 | Dice 1 | Dice 3 | Dice 5 | NoI@90 "
            "| not reached | s / refinement |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, row in sets.items():
            for mode in modes:
                m = row["modes"][mode]
                t = f"{m['median_refine_s']:.3f}" if m["median_refine_s"] is not None and mode not in UNREFINED else "-"
                lines.append(
                    f"| {name} | {row['volumes']} | {m['slices']} | {row['automatic_volume_dice']:.3f} | "
                    f"{MODE_NAMES[mode]} | {m['dice_0']:.3f} | {m['dice_1']:.3f} | {m['dice_3']:.3f} | "
                    f"{m['dice_5']:.3f} | {m['noi90']:.2f} | {m['missed90']:.0%} | {t} |"
                )
        lines.append("")
    latency = report.get("latency")
    if latency:
        lines += [
            f"Latency through the MONAI Label server (one {' x '.join(map(str, latency['shape']))} stack, torch "
            "threads: the library default), seconds per request through MONAI Label's client, file returned. The "
            "first correction of an image preprocesses it and runs the slice through FTN + STN; the app keeps both "
            f"for the next corrections. Load average at the end: {latency.get('load', float('nan')):.1f}.",
            "",
            "| model | first request on the image | next requests (median) | of which refinement | slowest next |",
            "|---|---|---|---|---|",
        ]
        for model in ("coopseg_clicks", "coopseg_scribbles"):
            r = latency[model]
            lines.append(
                f"| `{model}` | {r['first_s']:.3f} | {r['request_s']:.3f} | {r['refine_s']:.3f} | "
                f"{r['request_s_max']:.3f} |"
            )
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
