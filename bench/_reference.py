"""The reference implementation's training iteration, for side-by-side timing (``bench/train_step.py --reference``).

Imports the public reference code from a checkout given on the command line
(``git clone https://github.com/cherise215/Cooperative_Training_and_Latent_Space_Data_Augmentation``) and runs one
iteration exactly as its training loop does (``medseg/train_adv_supervised_segmentation_triplet.py``: garbage
collection, noisy FTN input, ``standard_training``, for cooperative training ``hard_example_generation`` and
``hard_example_training`` with the configs of ``config/ACDC/cooperative_training.json``, one backward pass, the five
Adam steps), without data loading. Nothing of the reference is copied into this repository.

The reference's metrics and saving modules import ``medpy``, ``IPython.display`` and ``seaborn`` at import time, for
evaluation and plots only; when they are not installed, placeholder modules stand in for them (training never calls
them).
"""

from __future__ import annotations

import gc
import multiprocessing
import sys
import time
import types
from pathlib import Path

import torch

__all__ = ["ReferenceProcess", "ReferenceStep"]

MASK_CONFIG = {
    "image": {"loss_name": "mse", "mask_type": "random", "max_threshold": 0.5, "random_threshold": True,
              "if_soft": True},
    "shape": {"loss_name": "ce", "mask_type": "random", "max_threshold": 0.5, "random_threshold": True,
              "if_soft": True},
}  # fmt: skip


PLACEHOLDERS = {
    "medpy.metric.binary": ("dc", "hd", "asd", "assd", "hd95"),
    "IPython.display": ("display", "HTML"),
    "seaborn": ("set", "heatmap", "lineplot", "boxplot"),
}


def _placeholder(module: str, names: tuple[str, ...]) -> None:
    """Make ``module`` importable with do-nothing ``names`` unless the real one is installed."""
    try:
        __import__(module)
        return
    except ImportError:
        pass
    parts = module.split(".")
    for i in range(1, len(parts) + 1):
        sys.modules.setdefault(".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
    leaf = sys.modules[module]
    for name in names:
        setattr(leaf, name, lambda *args, **kwargs: None)
    for i in range(len(parts) - 1, 0, -1):
        setattr(sys.modules[".".join(parts[:i])], parts[i], sys.modules[".".join(parts[: i + 1])])


def _import_reference(checkout: Path) -> type:
    if not (checkout / "medseg" / "models" / "advanced_triplet_recon_segmentation_model.py").is_file():
        raise SystemExit(f"{checkout} is not a checkout of the reference implementation (no medseg/models/...).")
    for module, names in PLACEHOLDERS.items():
        _placeholder(module, names)
    sys.path.insert(0, str(checkout))
    from medseg.models.advanced_triplet_recon_segmentation_model import AdvancedTripletReconSegmentationModel

    return AdvancedTripletReconSegmentationModel


class ReferenceStep:
    """One reference training iteration on a fixed batch (``image`` ``B, 1, H, W`` in [0, 1], ``label`` ``B, H, W``).

    Args:
        checkout: the reference repository checkout.
        latent_da: cooperative training (True) or the reference's standard training (False).
        device: where it runs (the reference moves tensors with ``use_gpu``).
    """

    def __init__(self, checkout: str | Path, latent_da: bool, device: torch.device) -> None:
        model_class = _import_reference(Path(checkout))
        torch.manual_seed(0)
        self.solver = model_class("FCN_16_standard", num_classes=4, use_gpu=device.type == "cuda")
        self.latent_da = latent_da
        self.device = device

    def __call__(self, image: torch.Tensor, label: torch.Tensor) -> float:
        solver = self.solver
        gc.collect()
        solver.train()
        solver.reset_all_optimizers()
        clean, label = image.to(self.device), label.to(self.device)
        noisy = torch.clamp(clean + 0.05 * torch.randn_like(clean), 0, 1)
        seg, image_recon, gt_recon, shape_recon = solver.standard_training(clean, label, perturbed_image=noisy)
        loss = seg + image_recon + shape_recon + gt_recon
        if self.latent_da:
            solver.reset_all_optimizers()
            hard_image, hard_seg = solver.hard_example_generation(
                clean.detach().clone(), label.detach().clone(), gen_corrupted_seg=True, gen_corrupted_image=True,
                corrupted_image_DA_config=MASK_CONFIG["image"], corrupted_seg_DA_config=MASK_CONFIG["shape"],
            )  # fmt: skip
            terms = solver.hard_example_training(
                perturbed_image=hard_image,
                perturbed_seg=hard_seg,
                clean_image_l=clean,
                label_l=label,
                use_gpu=self.device.type == "cuda",
            )
            loss = loss + sum(terms)
        solver.reset_all_optimizers()
        loss.backward()
        solver.optimize_all_params()
        return float(loss.detach())


def _serve(checkout: str, latent_da: bool, device: str, image: torch.Tensor, label: torch.Tensor, conn) -> None:
    """Child process: build a :class:`ReferenceStep` and answer each request with one timed iteration's seconds."""
    step = ReferenceStep(checkout, latent_da, torch.device(device))
    conn.send("ready")
    while conn.recv() == "step":
        start = time.perf_counter()
        step(image, label)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        conn.send(time.perf_counter() - start)


class ReferenceProcess:
    """A :class:`ReferenceStep` in a process of its own, as the reference's users run it: glibc's default malloc,
    untouched by the allocator settings this bundle applies to its own process (``scripts.cpu_memory``).

    Calling it runs one iteration there and returns the seconds the child measured. ``close()`` ends the child.
    """

    def __init__(
        self, checkout: str | Path, latent_da: bool, device: torch.device, image: torch.Tensor, label: torch.Tensor
    ) -> None:
        context = multiprocessing.get_context("spawn")  # a fresh interpreter: nothing inherited from this process
        self._conn, child_conn = context.Pipe()
        self._process = context.Process(
            target=_serve, args=(str(checkout), latent_da, str(device), image, label, child_conn), daemon=True
        )
        self._process.start()
        if self._conn.recv() != "ready":
            raise RuntimeError("the reference process did not start")

    def __call__(self) -> float:
        self._conn.send("step")
        return float(self._conn.recv())

    def close(self) -> None:
        if self._process.is_alive():
            self._conn.send("stop")
            self._process.join(timeout=30)
