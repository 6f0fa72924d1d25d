"""Corrections on one frame of a volume, on the volume's own grid, through the bundle's network grid.

:class:`FrameRefiner` holds one preprocessed frame (the bundle's ``preprocessing`` output: intensities in [0, 1],
in-plane spacing of ``configs/inference.json``) and computes a slice's FTN + STN probabilities once, with the
bundle's :class:`~scripts.inference.inferer.CoopSegInferer`. :meth:`FrameRefiner.refine` takes a slice's current
mask and seed map on the volume's grid (``H, W``; labels 0 background, 1 LV, 2 myocardium, 3 RV; seeds -1 where
unmarked), refines on the network grid (:func:`scripts.interactive.refinement.refine_slice`) and returns the new
mask on the volume's grid: pixels change only where the refinement changed the label (so resampling never moves an
untouched boundary), and every seed keeps its label. With ``settings.learned`` the learned correction
(:mod:`scripts.interactive.correction_network`) then looks at the whole slice and may change what the user did not
mark; what the refinement changed stays. :meth:`FrameRefiner.automatic_volume` gives the frame's mask
as the inference workflow delivers it (the argmax, then the clean-up steps of ``label_postprocessing``: the largest
connected component per structure, hole filling when enabled), which is the mask a user starts correcting.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from ..inference.inferer import CoopSegInferer
from ..inference.outputs import FrameArgmaxd
from .correction_network import CorrectionNet, correct_slice
from .grid import SliceGrid
from .refinement import RefinementSettings, refine_slice, stn_shape_prior

__all__ = ["FrameRefiner", "LabelCleanup", "label_cleanup"]

LabelCleanup = Callable[[np.ndarray], np.ndarray]
"""One frame's ``H, W, D`` label codes -> the same, cleaned up as the inference workflow does."""


def label_cleanup(label_postprocessing: Sequence[Callable[[dict], dict]]) -> LabelCleanup:
    """The clean-up steps of the bundle's parsed ``label_postprocessing`` (the transforms after its
    :class:`~scripts.inference.outputs.FrameArgmaxd`) as a function of one frame's ``H, W, D`` label codes."""
    steps = list(label_postprocessing)
    argmax = [i for i, t in enumerate(steps) if isinstance(t, FrameArgmaxd)]
    if not argmax:
        raise ValueError("label_postprocessing has no FrameArgmaxd: cannot tell its clean-up steps apart.")
    steps = steps[argmax[0] + 1 :]

    def clean(labels: np.ndarray) -> np.ndarray:
        data = {"pred": torch.as_tensor(np.ascontiguousarray(labels))[None]}
        for step in steps:
            data = step(data)
        return np.asarray(data["pred"][0], dtype=labels.dtype)

    return clean


class FrameRefiner:
    """One frame: ``image`` ``Hn, Wn, D`` on the network grid, ``network`` with ``segment`` and ``refine_logits``.

    Args:
        image: the preprocessed frame, ``Hn, Wn, D`` in [0, 1].
        network_affine: its 4 x 4 affine; ``native_affine`` and ``native_shape`` (``H, W, D``) describe the
            volume's own grid (same world frame).
        network: the served network (``nn.Module`` or TorchScript) in eval mode.
        settings: the refinement settings (default :class:`RefinementSettings`).
        inferer: the bundle's inferer (a new ``CoopSegInferer(refine=True)`` if None).
        correction_network: the learned correction (:class:`~scripts.interactive.correction_network.CorrectionNet`,
            eval mode), used when ``settings.learned`` is set.
    """

    def __init__(
        self,
        image: np.ndarray | torch.Tensor,
        network_affine: np.ndarray,
        native_affine: np.ndarray,
        native_shape: tuple[int, int, int],
        network: Any,
        settings: RefinementSettings | None = None,
        inferer: CoopSegInferer | None = None,
        correction_network: CorrectionNet | None = None,
    ) -> None:
        self.image = torch.as_tensor(image, dtype=torch.float32)
        if self.image.ndim != 3 or self.image.shape[2] != native_shape[2]:
            raise ValueError(f"image must be Hn, Wn, D with the volume's {native_shape[2]} slices.")
        self.grid = SliceGrid(native_affine, network_affine, native_shape[:2], tuple(self.image.shape[:2]))
        self.native_shape = tuple(int(s) for s in native_shape)
        self.network = network
        self.settings = settings or RefinementSettings()
        self.inferer = inferer or CoopSegInferer(refine=True)
        self._probs: dict[int, np.ndarray] = {}
        self._shape_prior = stn_shape_prior(network)
        self.correction_network = correction_network

    @classmethod
    def from_preprocessed(cls, image: Any, frame: int, native_shape: tuple[int, ...], network: Any, **kwargs: Any):
        """From the bundle preprocessing's output ``F, Hn, Wn, D`` (a MetaTensor with ``affine`` and
        ``meta["original_affine"]``), frame ``frame``; ``native_shape`` starts with the volume's ``H, W, D``."""
        affine = np.asarray(image.affine, dtype=float)
        original = np.asarray(image.meta["original_affine"], dtype=float)
        return cls(image[frame], affine, original, tuple(native_shape[:3]), network, **kwargs)

    def with_settings(self, settings: RefinementSettings) -> FrameRefiner:
        """A refiner of the same frame with other refinement ``settings``, sharing this one's image, grid and
        computed probabilities (no second FTN + STN pass)."""
        other = copy.copy(self)
        other.settings = settings
        return other

    def _check_learned(self) -> None:
        if self.settings.learned and self.correction_network is None:
            raise ValueError("the refinement settings ask for the learned correction (learned: true), but no "
                             "correction network was given (models/correction_net.pt).")  # fmt: skip

    @property
    def num_slices(self) -> int:
        return self.native_shape[2]

    def model_probs(self, k: int) -> np.ndarray:
        """FTN + STN class probabilities ``K, Hn, Wn`` of slice ``k`` (computed once)."""
        if k not in self._probs:
            self.precompute([k])
        return self._probs[k]

    def precompute(self, slices: list[int] | None = None) -> None:
        """Compute the probabilities of ``slices`` (default all) in one inferer call."""
        slices = [k for k in (range(self.num_slices) if slices is None else slices) if k not in self._probs]
        if not slices:
            return
        device = next(iter(self.network.parameters()), torch.empty(0)).device
        x = self.image[:, :, slices][None, None].to(device)
        pred = self.inferer.predict(x, self.network)["pred"][0].float().cpu().numpy()  # K, Hn, Wn, len(slices)
        for i, k in enumerate(slices):
            self._probs[k] = np.ascontiguousarray(pred[..., i])

    def automatic_mask(self, k: int) -> np.ndarray:
        """The model's mask of slice ``k`` on the volume's grid (``H, W`` uint8)."""
        return self.grid.probs_to_native(self.model_probs(k)).argmax(axis=0).astype(np.uint8)

    def automatic_volume(self, cleanup: LabelCleanup | None = None) -> np.ndarray:
        """The model's mask of every slice (``H, W, D`` uint8), cleaned up by ``cleanup`` (see
        :func:`label_cleanup`; None: the argmax alone)."""
        self.precompute()
        labels = np.stack([self.automatic_mask(k) for k in range(self.num_slices)], axis=-1)
        return labels if cleanup is None else cleanup(labels)

    def resolve_excluded(self, k: int, pixels: np.ndarray, excluded: int, prior: np.ndarray) -> np.ndarray:
        """Labels ``N`` for marks that only say "not ``excluded``" (a background click or scribble of the selected
        label) at ``pixels`` ``N, 2`` of slice ``k``: the current label where it is another one, else the model's
        most likely label other than ``excluded``."""
        labels = prior[pixels[:, 0], pixels[:, 1]].astype(np.int16)
        wrong = labels == excluded
        if wrong.any():
            probs = self.grid.probs_to_native(self.model_probs(k))[:, pixels[wrong, 0], pixels[wrong, 1]]
            probs[excluded] = -1.0
            labels[wrong] = probs.argmax(axis=0)
        return labels

    def refine(self, k: int, prior: np.ndarray, seeds: np.ndarray) -> np.ndarray:
        """The new mask ``H, W`` (uint8) of slice ``k`` from its current mask ``prior`` and ``seeds`` (both ``H, W``
        on the volume's grid)."""
        expected = self.native_shape[:2]
        if prior.shape != expected or seeds.shape != expected:
            raise ValueError(f"prior {prior.shape} and seeds {seeds.shape} must be the slice's {expected}.")
        self._check_learned()
        prior_n = self.grid.labels_to_network(prior.astype(np.int16))
        seeds_n = self.grid.seeds_to_network(seeds.astype(np.int16))
        image_n = self.image[:, :, k].numpy()
        probs = refine_slice(image_n, self.model_probs(k), prior_n, seeds_n, self._shape_prior, self.settings)
        mask = self._apply(prior, prior_n, probs, seeds)
        if not self.settings.learned:
            return mask
        # the learned correction sees the whole slice after the spread; what the spread changed stays
        current_n = self.grid.labels_to_network(mask.astype(np.int16))
        probs = correct_slice(self.correction_network, image_n, current_n, seeds_n)
        learned = self._apply(mask, current_n, probs, seeds)
        spread = mask != prior
        learned[spread] = mask[spread]
        return learned

    def _apply(self, prior: np.ndarray, prior_n: np.ndarray, probs: np.ndarray, seeds: np.ndarray) -> np.ndarray:
        """``prior`` (volume grid) changed where the argmax of ``probs`` (network grid) differs from ``prior_n``
        (resampled there, the boundary widened by a pixel), every seed keeping its label."""
        changed_n = probs.argmax(axis=0) != prior_n
        changed = self.grid.labels_to_native(changed_n.astype(np.uint8)) > 0
        changed = ndimage.binary_dilation(changed, iterations=1)
        mask = np.where(changed, self.grid.probs_to_native(probs).argmax(axis=0), prior).astype(np.uint8)
        marked = seeds >= 0
        mask[marked] = seeds[marked]
        return mask
