"""Benchmark: interactive correction with a simulated annotator, and the latency of one refinement through the server.

1. **Simulated annotator** (``scripts.interactive.annotator``) on the synthetic domain-shift suite
   (``tools/robustness/domains.py``): for every slice of the chosen volumes that holds a structure, starting from the
   automatic FTN + STN mask, the largest error region is corrected (a click at its centre, a scribble along its
   skeleton, or the same stroke painted by hand: manual editing, the baseline), the slice refined
   (``scripts.interactive.session.FrameRefiner``, the code the app serves) and its Dice recorded, until Dice 0.90 or 10
   interactions. Clicks are sent as the Slicer DeepGrow flow sends them (every click so far, on the automatic mask);
   scribbles as the Slicer scribbles flow does (every scribble so far, on the current mask). Per test set: the
   automatic mask's Dice per volume, mean slice Dice after 0, 1, 3 and 5 interactions, mean NoI@90 (a slice that
   does not reach 0.90 counts 10) and the share of slices that do not reach it.
2. **Latency** (``--server``): a running MONAI Label server (``apps/coopseg_label`` on 127.0.0.1) over one
   224 x 224 x 10 phantom stack at the bundle's spacing: median seconds per ``/infer/coopseg_clicks`` request (one
   click on one slice) and per ``/infer/coopseg_scribbles`` request (one scribble), through MONAI Label's client,
   the file written and returned, with the server's threads as on the machine.

The table goes to ``--out`` (``results.md`` and ``results.json``), with the machine and the command.

    python bench/interactive.py                                  # bundle/models/model.pt, 6 volumes per test set
    python bench/interactive.py --weights other.pt --volumes 20  # every test volume
    python bench/interactive.py --server --sets none             # latency only
"""

from __future__ import annotations

import argparse
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
    InteractionCurve,
    mean_dice_after,
    noi,
    seed_map,
    simulate,
)
from scripts.interactive.refinement import RefinementSettings  # noqa: E402
from scripts.interactive.session import FrameRefiner  # noqa: E402
from tools.machine import cpu_model  # noqa: E402

logger = logging.getLogger("bench.interactive")

MODES = ("click", "scribble", "manual")
STEPS = (0, 1, 3, 5)
MAX_INTERACTIONS = 10
TARGET = 0.90
SHIFTED_BELOW = 0.70


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


def volume_dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Mean 3D Dice over LV, myocardium and RV (a structure in neither counts 1)."""
    scores = []
    for label in (1, 2, 3):
        p, t = pred == label, truth == label
        total = int(p.sum()) + int(t.sum())
        scores.append(2.0 * int((p & t).sum()) / total if total else 1.0)
    return float(np.mean(scores))


def run_volume(
    preprocess: Any, network: Any, entry: dict[str, str], suite: Path, settings: RefinementSettings, modes: list[str]
) -> dict[str, Any]:
    """Curves per mode for every slice of one volume, and the automatic mask's volume Dice."""
    import nibabel as nib

    image = preprocess({"image": str(suite / entry["image"])})["image"]
    truth = np.asarray(nib.load(str(suite / entry["label"])).dataobj).astype(np.uint8)
    refiner = FrameRefiner.from_preprocessed(image, 0, truth.shape, network, settings=settings)
    refiner.precompute()
    automatic = np.stack([refiner.automatic_mask(k) for k in range(truth.shape[2])], axis=-1)
    curves: dict[str, list[InteractionCurve]] = {mode: [] for mode in modes}
    for k in range(truth.shape[2]):
        initial = automatic[..., k]

        def refine(
            mask: np.ndarray, corrections: list, k: int = k, initial: np.ndarray = initial, mode: str = ""
        ) -> Any:
            prior = initial if mode == "click" else mask
            return refiner.refine(k, prior, seed_map(corrections, initial.shape))

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
    return {"automatic_dice": volume_dice(automatic, truth), "curves": curves}


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
    preprocess = bundle_parser(bundle).get_parsed_content("preprocessing")
    network = load_network(bundle, weights)
    settings = RefinementSettings(**json.loads(args.settings)) if args.settings else RefinementSettings()
    results: dict[str, Any] = {}
    for name in names:
        start = time.perf_counter()
        per_mode: dict[str, list[InteractionCurve]] = {m: [] for m in args.modes}
        automatic = []
        for entry in pick(datalist[name], args.volumes):
            got = run_volume(preprocess, network, entry, suite, settings, args.modes)
            automatic.append(got["automatic_dice"])
            for mode in args.modes:
                per_mode[mode] += got["curves"][mode]
        results[name] = {
            "volumes": len(automatic),
            "automatic_volume_dice": float(np.mean(automatic)),
            "modes": {mode: summarise(curves) for mode, curves in per_mode.items()},
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
    return {"suite": str(suite), "settings": settings.__dict__, "sets": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default=str(BUNDLE), help="bundle folder (configs, scripts)")
    parser.add_argument("--weights", default=None, help="state dict (default: <bundle>/models/model.pt)")
    parser.add_argument("--suite", default=None, help="test-domain suite folder (default: generated and cached)")
    parser.add_argument("--sets", nargs="+", default=["all"], help="test sets ('all', or names; 'none' for none)")
    parser.add_argument("--volumes", type=int, default=6, help="volumes per test set, spread over it (0: all)")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--settings", default="", help="JSON of RefinementSettings fields to change")
    parser.add_argument("--server", action="store_true", help="also time refinements through a MONAI Label server")
    parser.add_argument("--repeats", type=int, default=10, help="timed server requests per model")
    parser.add_argument("--out", default=str(REPO / "docs" / "results" / "interactive"), help="results folder")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    bundle = Path(args.bundle).resolve()
    weights = Path(args.weights).resolve() if args.weights else bundle / "models" / "model.pt"
    machine = (
        f"{cpu_model()}, {os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"{platform.system()}"
    )
    print(f"machine: {machine}; load average {os.getloadavg()[0]:.2f}")
    report: dict[str, Any] = {"machine": machine, "command": " ".join(["python", *sys.argv]), "weights": str(weights)}
    if args.sets != ["none"]:
        report.update(simulate_sets(args, bundle, weights))
    if args.server:
        report["latency"] = server_latency(bundle, weights, args.repeats)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=1))
    text = render(report)
    (out / "results.md").write_text(text)
    print(text)


def server_latency(bundle: Path, weights: Path, repeats: int) -> dict[str, Any]:
    raise NotImplementedError


def render(report: dict[str, Any]) -> str:
    return json.dumps(report.get("sets", {}), indent=1)


if __name__ == "__main__":
    main()
