"""Benchmark: seconds per training iteration, cooperative vs standard training, measured in one run.

The reference protocol's batch: 10 augmented + 10 original slices of 192 x 192 (batch 20), the reference-width
network, one full iteration (forward, hard-example generation for cooperative training, backward, Adam step) through
the bundle's own ``CooperativeTrainer._iteration`` with train.json's defaults (channels-last, freed CPU memory kept for
reuse). Prints the median over ``--iters`` timed iterations after ``--warmup`` untimed ones, the ratio cooperative /
standard, the thread count and the CPU model.

    python bench/train_step.py                # reference setting
    python bench/train_step.py --size 96 --batch 12 --iters 5
    python bench/train_step.py --size 96 --batch 12 --layouts   # cooperative, contiguous vs channels-last
    python bench/train_step.py --no-retain-memory               # glibc's default malloc (compare with a plain run)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "bundle"), str(REPO)]  # the bundle's `scripts`, the repository's `tools`

from scripts.engine.trainer import CooperativeTrainer, PairedSlicePrepareBatch, per_part_param_groups  # noqa: E402
from scripts.model.masking import LatentMasker  # noqa: E402
from scripts.model.networks import CoopSegNet  # noqa: E402
from tools.machine import cpu_model  # noqa: E402


def make_trainer(
    latent_da: bool, device: torch.device, seed: int = 0, channels_last: bool = True, retain_cpu_memory: bool = True
) -> CooperativeTrainer:
    torch.manual_seed(seed)
    net = CoopSegNet().to(device)
    optimizer = torch.optim.Adam(per_part_param_groups(net), lr=1e-4)
    trainer = CooperativeTrainer(
        device=device,
        max_epochs=1,
        train_data_loader=[],
        network=net,
        optimizer=optimizer,
        latent_da=latent_da,
        image_masker=LatentMasker(),
        shape_masker=LatentMasker(),
        prepare_batch=PairedSlicePrepareBatch(True),
        epoch_length=1,
        channels_last=channels_last,
        retain_cpu_memory=retain_cpu_memory,
    )
    trainer.state.device = device
    return trainer


def synthetic_batch(half: int, size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    label = torch.randint(0, 4, (2 * half, 1, size, size), generator=g).float()
    image = torch.rand(2 * half, 1, size, size, generator=g)
    return {"image": image[:half], "label": label[:half], "image_orig": image[half:], "label_orig": label[half:]}


def time_iterations(trainer: CooperativeTrainer, batch: dict, warmup: int, iters: int) -> list[float]:
    times = []
    for i in range(warmup + iters):
        if trainer.state.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        trainer._iteration(trainer, batch)
        if trainer.state.device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=192, help="slice size (divisible by 16)")
    parser.add_argument("--batch", type=int, default=20, help="slices per iteration (augmented + original)")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--layouts", action="store_true", help="compare cooperative training in contiguous and channels-last layout"
    )
    parser.add_argument(
        "--no-retain-memory",
        action="store_true",
        help="leave glibc's malloc at its defaults (train.json's retain_cpu_memory false); it is process-wide, so "
        "compare two runs",
    )
    args = parser.parse_args()
    retain = not args.no_retain_memory
    device = torch.device(args.device)
    batch = synthetic_batch(args.batch // 2, args.size)
    results = {}
    # Interleave the two modes so that machine load drifts affect both alike.
    if args.layouts:
        trainers = {
            "contiguous": make_trainer(True, device, 0, False, retain),
            "channels_last": make_trainer(True, device, 0, True, retain),
        }
    else:
        trainers = {
            "standard": make_trainer(False, device, 0, True, retain),
            "cooperative": make_trainer(True, device, 0, True, retain),
        }
    samples: dict[str, list[float]] = {k: [] for k in trainers}
    for trainer in trainers.values():
        time_iterations(trainer, batch, args.warmup, 0)
    for _ in range(args.iters):
        for name, trainer in trainers.items():
            samples[name] += time_iterations(trainer, batch, 0, 1)
    for name, times in samples.items():
        results[name] = statistics.median(times)
    print(
        f"device: {device} | torch {torch.__version__} | threads: {torch.get_num_threads()} | cpu: {cpu_model()} | "
        f"freed memory kept: {retain}"
    )
    print(
        f"batch {args.batch} ({args.batch // 2} + {args.batch // 2}), {args.size} x {args.size}, "
        f"median of {args.iters} iterations after {args.warmup} warm-up"
    )
    for name, value in results.items():
        print(f"{name:12s} {value:8.3f} s/iteration")
    first, second = results
    print(f"ratio {second} / {first}: {results[second] / results[first]:.2f}")


if __name__ == "__main__":
    main()
