"""A learned correction: image, current mask and the user's marks in, corrected mask out.

The geodesic refinement (:mod:`scripts.interactive.refinement`) fixes the region a correction touches; it cannot fix
what the user did not mark. :class:`CorrectionNet` looks at the whole slice: given the image, the mask the user sees
and the marks so far, it returns the mask with the marked error fixed and, where the same mistake shows elsewhere
(an intensity shift that made the model miss the myocardium all round, say), those errors too. It is trained on the
training subjects with simulated corrections of the segmentation network's own mistakes
(:mod:`scripts.interactive.correction_training`).

Conventions: one slice of the network grid (the bundle's preprocessing output), the image ``H, W`` in [0, 1], label
codes 0 background, 1 LV, 2 myocardium, 3 RV; seeds ``H, W`` -1 where unmarked, else the label the user gave.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from monai.networks.nets import BasicUNet
from torch import nn

__all__ = ["CorrectionNet", "correct_slice", "correction_inputs", "load_correction_network", "onehot_codes"]

DIVISOR = 16  # four poolings


class CorrectionNet(nn.Module):
    """``(image B, 1, H, W; mask one-hot B, K, H, W; marks one-hot B, K, H, W) -> logits B, K, H, W``.

    A 2D :class:`monai.networks.nets.BasicUNet` on the ``1 + 2K`` channels, plus ``keep`` times the current mask's
    one-hot map (learned, starting at 3): without evidence to the contrary the network keeps the mask the user sees.
    ``H, W`` must be multiples of 16 (see :func:`correction_inputs`).

    Args:
        num_classes: K, label codes including background.
        features: BasicUNet features (five levels and the output block).
        keep: initial weight of the current mask in the logits.
    """

    def __init__(
        self, num_classes: int = 4, features: tuple[int, ...] = (16, 16, 32, 64, 128, 16), keep: float = 3.0
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.unet = BasicUNet(spatial_dims=2, in_channels=1 + 2 * num_classes, out_channels=num_classes,
                              features=features)  # fmt: skip
        self.keep = nn.Parameter(torch.tensor(float(keep)))

    def forward(self, image: torch.Tensor, mask: torch.Tensor, marks: torch.Tensor) -> torch.Tensor:
        return self.unet(torch.cat([image, mask, marks], dim=1)) + self.keep * mask


def load_correction_network(path: str | Path, num_classes: int = 4) -> CorrectionNet:
    """A :class:`CorrectionNet` with the state dict at ``path`` (as written by
    :mod:`scripts.interactive.correction_training`), in eval mode on the CPU.

    Raises:
        FileNotFoundError: no file at ``path`` (named, with the command that trains one).
        ValueError: the file is not a correction network's state dict (the mismatch named).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"no correction network at {path}; train one with "
            f"`PYTHONPATH=bundle python -m scripts.interactive.correction_training --out {path}`."
        )
    network = CorrectionNet(num_classes)
    try:
        network.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except (RuntimeError, KeyError) as error:
        raise ValueError(f"{path} is not a correction network's state dict for {num_classes} classes: {error}") from (
            error
        )
    return network.eval()


def onehot_codes(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """``H, W`` codes (-1: none) -> ``K, H, W`` float32."""
    return (labels[None] == np.arange(num_classes)[:, None, None]).astype(np.float32)


def correction_inputs(
    image: np.ndarray, mask: np.ndarray, seeds: np.ndarray, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The network's three inputs for one slice (``1, C, H', W'``), zero-padded at the bottom and right to multiples
    of 16 (padding: no mask class, no mark)."""
    if image.shape != mask.shape or image.shape != seeds.shape:
        raise ValueError(f"image {image.shape}, mask {mask.shape} and seeds {seeds.shape} must share H, W.")
    h, w = image.shape
    pad = ((0, -h % DIVISOR), (0, -w % DIVISOR))
    x = np.pad(image.astype(np.float32), pad)[None, None]
    m = np.pad(onehot_codes(mask, num_classes), ((0, 0), *pad))[None]
    s = np.pad(onehot_codes(seeds, num_classes), ((0, 0), *pad))[None]
    return torch.from_numpy(x), torch.from_numpy(m), torch.from_numpy(s)


def correct_slice(network: CorrectionNet, image: np.ndarray, mask: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """Class probabilities ``K, H, W`` of the corrected slice (network grid); seeds are not yet imposed."""
    h, w = image.shape
    device = next(network.parameters()).device
    inputs = [t.to(device) for t in correction_inputs(image, mask, seeds, network.num_classes)]
    with torch.inference_mode():
        logits = network(*inputs)[0, :, :h, :w]
    return torch.softmax(logits.float(), dim=0).cpu().numpy()
