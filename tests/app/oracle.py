"""A cine whose right mask is known, and a stand-in network that finds exactly that mask.

Untrained weights give arbitrary masks, so a test could not say whether a cine's frames, voxels and function indices
came back right. Here each structure has its own intensity (:data:`INTENSITY`), and :class:`IntensityBandNet` labels
each pixel by the band its normalised intensity falls in: through the app's whole path (DICOM or NIfTI reading, the
bundle's preprocessing, slice inference, inversion to the input grid) the mask must equal the label the cine was
drawn from. It is saved as TorchScript (``models/model.ts``) with the ``segment`` and ``refine_logits`` methods the
bundle's inferer calls, the STN step softening the FTN's logits a little so the FTN-STN disagreement is small but not
zero.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

SPACING_MM = 1.36719  # the bundle's in-plane spacing: preprocessing does not resample, so edges stay exact
SLICE_MM = 8.0
INTENSITY = {0: 0, 1: 300, 2: 100, 3: 200}  # background, LV, myocardium, RV (stored values)
LV_RADII = (7, 6, 5, 6)  # per frame: ED is frame 0, ES frame 2
RV_RADII = (6, 5, 4, 5)


class IntensityBandNet(torch.nn.Module):
    """Logits peaking at each class's normalised intensity (the 2-98th percentile scaling maps LV to 1)."""

    def __init__(self, sharpness: float = 100.0) -> None:
        super().__init__()
        top = float(max(INTENSITY.values()))
        centres = torch.tensor([INTENSITY[c] / top for c in range(len(INTENSITY))], dtype=torch.float32)
        self.register_buffer("centres", centres.view(1, -1, 1, 1))
        self.sharpness = sharpness

    @torch.jit.export
    def segment(self, x: torch.Tensor) -> torch.Tensor:
        return -self.sharpness * (x - self.centres) ** 2

    @torch.jit.export
    def refine_logits(self, logits: torch.Tensor) -> torch.Tensor:
        return 0.8 * logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.refine_logits(self.segment(x))


def install(bundle: Path) -> Path:
    """Serve :class:`IntensityBandNet` from ``bundle``: ``models/model.ts``, no ``models/model.pt``."""
    models = Path(bundle) / "models"
    (models / "model.pt").unlink(missing_ok=True)
    path = models / "model.ts"
    torch.jit.script(IntensityBandNet().eval()).save(str(path))
    return path


def oblique_affine(shape: tuple[int, int, int]) -> np.ndarray:
    """A RAS affine at the bundle's spacing, rotated 20 degrees about an oblique axis, centred near the origin."""
    axis = np.array([1.0, 2.0, 2.0]) / 3.0
    angle = np.deg2rad(20.0)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rotation = np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([SPACING_MM, SPACING_MM, SLICE_MM])
    affine[:3, 3] = -affine[:3, :3] @ (np.array(shape) / 2.0) + np.array([10.0, -20.0, 30.0])
    return affine


def coded_cine(
    shape: tuple[int, int, int] = (40, 40, 4), blank_frames: tuple[int, ...] = ()
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(image H, W, D, F, label H, W, D, F uint8, affine)``: discs of LV blood (ringed by myocardium) and RV blood
    shrinking from frame 0 to frame 2; ``blank_frames`` are all background (no LV there)."""
    h, w, d = shape
    ii, jj = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    lv_centre, rv_centre = (h / 2, w / 3), (h / 2, 3 * w / 4)
    frames = []
    for f, (lv, rv) in enumerate(zip(LV_RADII, RV_RADII, strict=True)):
        plane = np.zeros((h, w), dtype=np.uint8)
        if f not in blank_frames:
            r_lv = np.hypot(ii - lv_centre[0], jj - lv_centre[1])
            plane[np.hypot(ii - rv_centre[0], jj - rv_centre[1]) <= rv] = 3
            plane[r_lv <= lv + 2] = 2
            plane[r_lv <= lv] = 1
        frames.append(np.repeat(plane[:, :, None], d, axis=2))
    label = np.stack(frames, axis=-1)
    lut = np.array([INTENSITY[c] for c in range(len(INTENSITY))], dtype=np.float32)
    return lut[label], label, oblique_affine(shape)
