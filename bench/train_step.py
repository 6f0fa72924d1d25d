"""Benchmark: seconds per training iteration, cooperative vs standard training, and against the reference, in one run.

The reference protocol's batch: 10 augmented + 10 original slices of 192 x 192 (batch 20), the reference-width
network, one full iteration (forward, hard-example generation for cooperative training, backward, Adam step) through
the bundle's own ``CooperativeTrainer._iteration`` with train.json's defaults (channels-last, freed CPU memory kept for
reuse). The contenders run in turn, one iteration each per round, so that load drifts affect them alike. Prints the
median over ``--iters`` rounds after ``--warmup`` untimed ones, the ratios, the thread count and the CPU model.

    python bench/train_step.py                          # reference setting: standard and cooperative
    python bench/train_step.py --reference /tmp/ref     # and the reference implementation's iterations beside them
    python bench/train_step.py --profile                # one cooperative iteration part by part
    python bench/train_step.py --gradient-reuse         # masks' gradients from the standard pass vs own passes
    python bench/train_step.py --size 96 --batch 12 --iters 5
    python bench/train_step.py --size 96 --batch 12 --layouts   # cooperative, contiguous vs channels-last
    python bench/train_step.py --no-retain-memory               # glibc's default malloc (compare with a plain run)

``--reference`` takes a checkout of https://github.com/cherise215/Cooperative_Training_and_Latent_Space_Data_Augmentation
(see ``bench/_reference.py``). It runs in processes of its own, as its users run it (glibc's default malloc), still
in turn with the other contenders; ``--reference-process shared`` runs it in this process instead, where it also
benefits from the bundle's allocator settings (``scripts.cpu_memory``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "bundle"), str(REPO), str(REPO / "bench")]  # scripts, tools, the reference runner

from scripts.engine.cooperative import (  # noqa: E402
    LatentGradients,
    StandardPass,
    add_input_noise,
    generate_hard_examples,
    hard_terms,
    standard_terms,
)
from scripts.engine.trainer import CooperativeTrainer, PairedSlicePrepareBatch, per_part_param_groups  # noqa: E402
from scripts.model.masking import LatentMasker  # noqa: E402
from scripts.model.networks import CoopSegNet  # noqa: E402
from tools.machine import cpu_model  # noqa: E402


def make_trainer(
    latent_da: bool,
    device: torch.device,
    seed: int = 0,
    channels_last: bool = True,
    retain_cpu_memory: bool = True,
    reuse_gradients: bool = True,
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
        # update_bn_stats (the reference's quirk) needs the maskers' own decoder passes, so it switches reuse off
        image_masker=LatentMasker(update_bn_stats=not reuse_gradients),
        shape_masker=LatentMasker(update_bn_stats=not reuse_gradients),
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


def timed(step, device: torch.device) -> float:
    """Seconds of one call of ``step()``."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


class _Clock:
    """Accumulates the seconds of named blocks: ``with clock("part"): ...``."""

    def __init__(self) -> None:
        self.parts: dict[str, list[float]] = {}
        self._name, self._start = "", 0.0

    def __call__(self, name: str) -> _Clock:
        self._name = name
        return self

    def __enter__(self) -> None:
        self._start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.parts.setdefault(self._name, []).append(time.perf_counter() - self._start)


def profile_parts(trainer: CooperativeTrainer, batch: dict, rounds: int) -> dict[str, float]:
    """Median seconds of each part of a cooperative iteration, computed as ``_iteration`` computes it."""
    net, device = trainer.network, trainer.state.device
    image, label = trainer.prepare_batch(batch, device)
    image = image.contiguous(memory_format=torch.channels_last)
    clock = _Clock()
    for _ in range(rounds + 1):
        trainer.optimizer.zero_grad(set_to_none=True)
        net.train()
        schemes = trainer.image_masker.draw_scheme(), trainer.shape_masker.draw_scheme()
        with clock("standard forward"):
            std: StandardPass = standard_terms(net, add_input_noise(image), image, label)
        with clock("latent gradients (targeted masks)"):
            grads = LatentGradients(std, *schemes)
        with clock("standard backward"):
            torch.stack(list(std.losses.values())).sum().backward()
        with clock("masking + decoding hard examples"):
            hard = generate_hard_examples(net, std.z_image, std.z_shape, image, label, trainer.image_masker,
                                          trainer.shape_masker, *schemes, grads)  # fmt: skip
        with clock("hard forward"):
            losses = hard_terms(net, hard, image, label)
        with clock("hard backward"):
            torch.stack(list(losses.values())).sum().backward()
        with clock("optimiser step"):
            trainer.optimizer.step()
    return {k: statistics.median(v[1:]) for k, v in clock.parts.items()}


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
    parser.add_argument("--reference", default=None, help="checkout of the reference implementation to time beside")
    parser.add_argument("--reference-process", choices=("own", "shared"), default="own",
                        help="run the reference in processes of its own with glibc's default malloc, as its users do "
                        "(own), or in this process with the bundle's allocator settings (shared)")  # fmt: skip
    parser.add_argument("--profile", action="store_true", help="one cooperative iteration, part by part")
    parser.add_argument("--gradient-reuse", action="store_true",
                        help="cooperative iterations with the targeted masks' gradients from the standard pass vs "
                        "from their own decoder passes")  # fmt: skip
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
    print(
        f"device: {device} | torch {torch.__version__} | threads: {torch.get_num_threads()} | cpu: {cpu_model()} | "
        f"freed memory kept: {retain}"
    )
    print(f"batch {args.batch} ({args.batch // 2} + {args.batch // 2}), {args.size} x {args.size}")
    if args.profile:
        trainer = make_trainer(True, device, 0, True, retain)
        parts = profile_parts(trainer, batch, args.iters)
        total = sum(parts.values())
        print(f"cooperative iteration, median of {args.iters} after 1 warm-up, part by part:")
        for name, seconds in parts.items():
            print(f"  {name:36s} {seconds:7.3f} s  {100 * seconds / total:5.1f} %")
        print(f"  {'total':36s} {total:7.3f} s")
        extras = parts["latent gradients (targeted masks)"] + parts["masking + decoding hard examples"]
        standard = parts["standard forward"] + parts["standard backward"] + parts["optimiser step"]
        print(f"the two extras (the masks' gradient, the masked decoding): {extras:.3f} s, "
              f"{100 * extras / total:.1f} % of the iteration")
        print(f"cooperative / its standard part: {total / standard:.2f}; without the extras: "
              f"{(total - extras) / standard:.2f}")
        return
    runs = {}  # name -> one timed iteration, returning its seconds
    if args.gradient_reuse:
        trainers = {name: make_trainer(True, device, 0, True, retain, reuse)
                    for name, reuse in (("own decoder passes", False), ("reused gradients", True))}  # fmt: skip
    elif args.layouts:
        trainers = {name: make_trainer(True, device, 0, channels_last, retain)
                    for name, channels_last in (("contiguous", False), ("channels_last", True))}  # fmt: skip
    else:
        trainers = {name: make_trainer(latent_da, device, 0, True, retain)
                    for name, latent_da in (("standard", False), ("cooperative", True))}  # fmt: skip
    for name, trainer in trainers.items():
        runs[name] = lambda t=trainer: timed(lambda: t._iteration(t, batch), device)
    children = []
    if args.reference:
        from _reference import ReferenceProcess, ReferenceStep

        image = torch.cat([batch["image"], batch["image_orig"]])
        label = torch.cat([batch["label"], batch["label_orig"]])[:, 0].long()
        for name, latent_da in (("reference standard", False), ("reference cooperative", True)):
            if args.reference_process == "own":
                children.append(ReferenceProcess(args.reference, latent_da, device, image, label))
                runs[name] = children[-1]  # returns the seconds measured in its own process
            else:
                reference = ReferenceStep(args.reference, latent_da, device)
                runs[name] = lambda r=reference: timed(lambda: r(image, label), device)
    samples: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(args.warmup):
        for run in runs.values():
            run()
    for _ in range(args.iters):  # in turn, so that load drifts affect every contender alike
        for name, run in runs.items():
            samples[name].append(run())
    for child in children:
        child.close()
    results = {name: statistics.median(times) for name, times in samples.items()}
    print(f"median of {args.iters} rounds after {args.warmup} warm-up")
    for name, value in results.items():
        print(f"{name:24s} {value:8.3f} s/iteration")
    names = list(results)
    print(f"ratio {names[1]} / {names[0]}: {results[names[1]] / results[names[0]]:.2f}")
    if args.reference:
        coop = results["cooperative"] / results["reference cooperative"]
        print(f"ratio cooperative / reference cooperative: {coop:.2f}")
        print(f"ratio standard / reference standard: {results['standard'] / results['reference standard']:.2f}")
        ref = results["reference cooperative"] / results["reference standard"]
        print(f"ratio reference cooperative / reference standard: {ref:.2f}")


if __name__ == "__main__":
    main()
