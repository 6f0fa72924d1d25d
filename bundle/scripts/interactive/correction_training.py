"""Train the :class:`~scripts.interactive.correction_network.CorrectionNet` on simulated corrections.

For every training slice (network grid, through the bundle's ``preprocessing``), the segmentation network segments
the slice and four intensity-shifted copies of it (gamma up and down, less contrast, blur and noise), so that the
masks to correct carry the kind of mistakes a shifted scanner causes. A training sample then replays the simulated
annotator (:mod:`scripts.interactive.annotator`): 0 to 4 earlier corrections have set their error regions right and
left their scribbles, and a new scribble marks the largest error left; the target is the true label map. Samples are
flipped, rotated by multiples of 90 degrees and cropped to 160 x 160 around the heart.

    PYTHONPATH=bundle python -m scripts.interactive.correction_training --out bundle/models/correction_net.pt

The training data are train.json's (``--dataset_dir`` / ``--datalist``; empty: the embedded synthetic phantom).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from .annotator import largest_error_region, stroke_along
from .correction_network import DIVISOR, CorrectionNet, onehot_codes
from .grid import SliceGrid

__all__ = ["Sample", "intensity_variants", "make_batch", "segmentation_samples", "simulate_state", "train"]

logger = logging.getLogger(__name__)

CROP = 160
Sample = tuple[np.ndarray, np.ndarray, np.ndarray]
"""(image ``H, W`` in [0, 1], true labels ``H, W`` int64, the segmentation network's labels ``H, W`` int64)."""


def intensity_variants(image: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """The slice and four shifted copies: gamma above and below 1, contrast halved about the mean, blur + noise."""
    image = np.clip(image.astype(np.float32), 0.0, 1.0)
    mean = float(image.mean())
    out = [
        image,
        image ** np.exp(rng.uniform(0.4, 0.8)),
        image ** np.exp(-rng.uniform(0.4, 0.8)),
        np.clip((image - mean) * rng.uniform(0.4, 0.6) + mean, 0.0, 1.0),
        np.clip(ndimage.gaussian_filter(image, 1.5) + rng.normal(0.0, 0.05, image.shape), 0.0, 1.0),
    ]
    return [o.astype(np.float32) for o in out]


def segmentation_samples(
    entries: Sequence[dict[str, str]], preprocess: Any, network: torch.nn.Module, rng: np.random.Generator
) -> list[Sample]:
    """Every slice holding a structure, as :data:`Sample` for each of its :func:`intensity_variants`.

    ``entries``: datalist entries with ``image`` and ``label`` paths (3D); ``preprocess``: the bundle's inference
    ``preprocessing``; ``network``: the segmentation network (``forward``: FTN + STN logits), in eval mode.
    """
    import nibabel as nib

    samples: list[Sample] = []
    for entry in entries:
        image = preprocess({"image": entry["image"]})["image"]
        truth = np.asarray(nib.load(entry["label"]).dataobj).astype(np.int16)
        if truth.ndim != 3:
            raise ValueError(f"{entry['label']}: expected a 3D label map (H, W, slices), got shape {truth.shape}.")
        affine = np.asarray(image.affine, dtype=float)
        grid = SliceGrid(np.asarray(image.meta["original_affine"], dtype=float), affine, truth.shape[:2],
                         tuple(image.shape[1:3]))  # fmt: skip
        for k in range(truth.shape[2]):
            labels = grid.labels_to_network(truth[..., k]).astype(np.int64)
            if not (labels > 0).any():
                continue
            for variant in intensity_variants(np.asarray(image[0, :, :, k]), rng):
                h, w = variant.shape
                x = torch.nn.functional.pad(torch.from_numpy(variant)[None, None], (0, -w % DIVISOR, 0, -h % DIVISOR))
                with torch.inference_mode():
                    pred = network(x)[0, :, :h, :w].argmax(0).numpy().astype(np.int64)
                samples.append((variant, labels, pred))
    return samples


def simulate_state(
    pred: np.ndarray, truth: np.ndarray, rng: np.random.Generator, max_earlier: int = 4
) -> tuple[np.ndarray, np.ndarray]:
    """``(current mask, seeds)`` after 0 to ``max_earlier`` corrections that set their whole error region right,
    with their scribbles and a new one on the largest error left (brush radius 1 to 3 pixels)."""
    mask = pred.copy()
    seeds = np.full(mask.shape, -1, dtype=np.int64)
    earlier = int(rng.integers(0, max_earlier + 1))
    for i in range(earlier + 1):
        found = largest_error_region(mask, truth)
        if found is None:
            break
        region, label = found
        pixels = stroke_along(region, truth, label, int(rng.integers(1, 4)))
        seeds[pixels[:, 0], pixels[:, 1]] = label
        if i < earlier:
            mask[region] = label
    return mask, seeds


def _crop(labels: np.ndarray, rng: np.random.Generator, size: int) -> tuple[slice, slice]:
    ys, xs = np.nonzero(labels > 0)
    starts = []
    for centre, extent in ((int(ys.mean()), labels.shape[0]), (int(xs.mean()), labels.shape[1])):
        starts.append(int(np.clip(centre - size // 2 + rng.integers(-20, 21), 0, max(0, extent - size))))
    return slice(starts[0], starts[0] + size), slice(starts[1], starts[1] + size)


def _cut(array: np.ndarray, box: tuple[slice, slice], size: int, fill: int = 0) -> np.ndarray:
    """``array[box]`` padded at the bottom and right to ``size x size`` with ``fill``."""
    part = array[box]
    return np.pad(part, [(0, size - part.shape[0]), (0, size - part.shape[1])], constant_values=fill)


def make_batch(
    samples: Sequence[Sample], rng: np.random.Generator, size: int, num_classes: int, crop: int = CROP
) -> tuple[torch.Tensor, ...]:
    """``(image B,1,c,c; mask one-hot B,K,c,c; marks one-hot B,K,c,c; target B,c,c)`` of ``size`` random samples."""
    images, masks, marks, targets = [], [], [], []
    for j in rng.choice(len(samples), size, replace=len(samples) < size):
        image, truth, pred = samples[int(j)]
        turns, flip = int(rng.integers(4)), bool(rng.random() < 0.5)
        image, truth, pred = (np.rot90(a[:, ::-1] if flip else a, turns) for a in (image, truth, pred))
        mask, seeds = simulate_state(np.ascontiguousarray(pred), np.ascontiguousarray(truth), rng)
        box = _crop(truth, rng, crop)
        images.append(_cut(image, box, crop)[None])
        masks.append(onehot_codes(_cut(mask, box, crop), num_classes))
        marks.append(onehot_codes(_cut(seeds, box, crop, fill=-1), num_classes))
        targets.append(_cut(truth, box, crop))
    return tuple(torch.from_numpy(np.ascontiguousarray(np.stack(a))) for a in (images, masks, marks, targets))


def train(
    samples: Sequence[Sample],
    iterations: int,
    out: Path,
    num_classes: int = 4,
    batch_size: int = 8,
    learning_rate: float = 1e-3,
    seed: int = 0,
    log_every: int = 50,
    crop: int = CROP,
) -> dict[str, Any]:
    """Train a new :class:`CorrectionNet` for ``iterations`` (cross-entropy + foreground soft Dice, Adam) and save
    its state dict to ``out`` (written to a temporary file, then renamed); returns the training record. ``crop``:
    the side of the square training crops (a multiple of 16)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    network = CorrectionNet(num_classes)
    optimiser = torch.optim.Adam(network.parameters(), lr=learning_rate)
    record: dict[str, Any] = {"iterations": iterations, "batch_size": batch_size, "samples": len(samples), "log": []}
    start = time.perf_counter()
    for iteration in range(1, iterations + 1):
        image, mask, marks, target = make_batch(samples, rng, batch_size, num_classes, crop)
        logits = network(image, mask, marks)
        probs = torch.softmax(logits, 1)
        onehot = torch.nn.functional.one_hot(target, num_classes).permute(0, 3, 1, 2).float()
        overlap = 2 * (probs * onehot).sum((2, 3)) + 1
        dice = 1 - (overlap / (probs.sum((2, 3)) + onehot.sum((2, 3)) + 1))[:, 1:].mean()
        loss = torch.nn.functional.cross_entropy(logits, target) + dice
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if iteration % log_every == 0 or iteration == iterations:
            with torch.no_grad():
                before = float((mask.argmax(1) == target).float().mean())
                after = float((logits.argmax(1) == target).float().mean())
            seconds = time.perf_counter() - start
            record["log"].append({"iteration": iteration, "loss": loss.item(), "pixels_right_before": before,
                                  "pixels_right_after": after, "seconds": seconds})  # fmt: skip
            logger.info("iteration %d/%d: loss %.3f, pixels right %.4f -> %.4f (%.0f s)",
                        iteration, iterations, loss.item(), before, after, seconds)  # fmt: skip
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    torch.save(network.state_dict(), partial)
    partial.replace(out)
    record["seconds"] = time.perf_counter() - start
    return record


def main(argv: Sequence[str] | None = None) -> int:
    from monai.bundle import ConfigParser

    bundle = Path(__file__).resolve().parents[2]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=str(bundle / "models" / "model.pt"), help="segmentation network")
    parser.add_argument("--out", default=str(bundle / "models" / "correction_net.pt"))
    parser.add_argument("--dataset_dir", default="", help="train.json's dataset_dir (empty: the synthetic phantom)")
    parser.add_argument("--datalist", default="", help="train.json's datalist")
    parser.add_argument("--iterations", type=int, default=2500)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    out = Path(args.out)
    if out.exists():
        raise SystemExit(f"{out} exists; remove it or choose another --out (weights are never overwritten).")
    configs = {}
    for name in ("train", "inference"):
        configs[name] = ConfigParser()
        configs[name].read_config(str(bundle / "configs" / f"{name}.json"))
        configs[name].update({"bundle_root": str(bundle)})
    configs["train"].update({"dataset_dir": args.dataset_dir, "datalist": args.datalist})
    network = configs["inference"].get_parsed_content("network_def")
    network.load_state_dict(torch.load(args.weights, map_location="cpu", weights_only=True))
    network.eval()
    rng = np.random.default_rng(args.seed)
    entries = configs["train"].get_parsed_content("datalists")["training"]
    samples = segmentation_samples(entries, configs["inference"].get_parsed_content("preprocessing"), network, rng)
    logger.info("%d training samples (slices x intensity variants)", len(samples))
    record = train(samples, args.iterations, out, batch_size=args.batch_size, seed=args.seed)
    record.update(weights=str(args.weights), dataset_dir=args.dataset_dir or "synthetic phantom")
    out.with_suffix(".json").write_text(json.dumps(record, indent=1))
    logger.info("saved %s (%d iterations, %.0f s)", out, args.iterations, record["seconds"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
