"""Refine one slice's mask from the user's corrections, with the model's probabilities and the STN's shape prior.

Everything here works on one slice of the network grid (the bundle's preprocessing output): the image ``H, W`` in
[0, 1], the FTN + STN class probabilities ``K, H, W`` (label codes 0 background, 1 LV, 2 myocardium, 3 RV), the
current mask ``H, W`` (``prior``, what the user sees) and the corrections as a seed map ``H, W`` (-1 unmarked, else
the label the user gave that pixel). The result is new class probabilities ``K, H, W``; their argmax is the new mask,
and every seed keeps the label the user gave it.

Methods (:class:`RefinementSettings`):

* ``geodesic`` (the default of :class:`RefinementSettings`, and the clicks' in ``inference.json``): each seed's
  label spreads over the pixels that carry the same current label as the seed (the same mistake), along paths that do
  not cross image edges (a geodesic distance; a correction to background, which is many tissues, by distance alone),
  as far as it outweighs the model's probabilities (the FTN + STN probabilities of the automatic mask, floored so a
  confidently wrong model is still corrected); the region's border then moves onto the strongest image edge within a
  few pixels (a graph cut in that band);
* ``shape`` (the scribbles' in ``inference.json``): the same, then, near the changed pixels, the corrected
  probabilities are fused with the STN's reconstruction of them, so a corrected structure can drag its neighbours
  along (e.g. the myocardium around an LV the user added). Chosen per kind of correction by measurement
  (``bench/interactive.py`` on a tuning suite of other subjects than the reported test sets): it makes scribbles
  faster and clicks slower;
* ``graphcut``: MONAI Label's scribbles approach, per corrected label against the rest: ISeg unaries (the model's
  probabilities, seeds fixed) and a contrast-sensitive pairwise term, solved exactly by max-flow.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import numpymaxflow
import torch
from scipy import ndimage
from skimage.graph import MCP_Geometric

__all__ = [
    "CORRECTION_KINDS",
    "METHODS",
    "RefinementSettings",
    "refine_slice",
    "settings_for",
    "spread_corrections",
    "stn_shape_prior",
]

METHODS = ("shape", "geodesic", "graphcut")
# the kinds of correction the app serves, each with its own settings (inference.json's ``interactive_refinement``)
CORRECTION_KINDS = ("scribbles", "clicks")
EPS = 1e-6

ShapePrior = Callable[[np.ndarray], np.ndarray]
"""``K, H, W`` probabilities -> ``K, H, W`` probabilities of a plausible shape (the STN's reconstruction)."""


@dataclasses.dataclass(frozen=True)
class RefinementSettings:
    """How a correction changes the mask (distances in network-grid pixels, the image in [0, 1]).

    Attributes:
        method: ``shape``, ``geodesic`` or ``graphcut`` (see the module docstring).
        edge_weight: cost of crossing an edge on the geodesic paths: a path step costs ``1 + edge_weight * g``,
            ``g`` being the smoothed image's intensity change per pixel beyond the slice's noise (``noise_floor``
            times its median intensity change).
        noise_floor: see ``edge_weight``.
        intensity_weight: cost per unit of intensity difference from the seeds' median intensity (beyond
            ``intensity_tolerance``) of a path step: a correction spreads over pixels that look like the seeds.
        intensity_tolerance: see ``intensity_weight``.
        background_edges: whether corrections to background stop at edges too; if not (the default), they spread
            by distance alone: background is many tissues, so a false structure holds edges of its own that would
            stop the correction. The price: within reach, true structure next to the false one goes too, and the
            next correction brings it back (fewer interactions overall on the phantom's validation and test sets).
        smoothing: Gaussian sigma applied to the image before its gradient.
        reach: geodesic distance at which a correction's weight has fallen to one half (from about 1 to about 0
            over ``0.3 * reach`` around it).
        scribble_reach: ``reach`` of a group of more than ``click_pixels`` seeds (a scribble): a stroke already
            marks the extent of what it corrects, so it reaches less far than a click, which marks only its centre.
        click_pixels: see ``scribble_reach`` (a click on a finer grid than the network's covers up to 4 pixels).
        evidence: how much a correction outweighs the model: a pixel's log-probability of the corrected label grows
            by ``evidence * weight``, and the pixel takes the label where that makes it the most likely one.
        confidence_floor: the belief's probabilities count at least this much against a correction (a model 99.9 %
            sure of a wrong label is no harder to correct than one 99 % sure).
        band: width of the band around a corrected region in which a graph cut moves its border onto an image edge
            (0: no snapping).
        prior_weight: weight of the current mask against the model's probabilities in the belief (above 0.5: the
            mask decides, the probabilities say how sure).
        shape_weight: exponent of the STN reconstruction in the fused belief ``B^(1 - w) * STN(B)^w``.
        shape_radius: the fusion applies within this distance of the changed pixels; the rest keeps the belief.
        lamda: graph cuts: weight of the pairwise term.
        sigma: graph cuts: intensity scale of the pairwise term.
        learned: after the method, the learned correction
            (:class:`~scripts.interactive.correction_network.CorrectionNet`) looks at the whole slice and fixes what
            the user did not mark as well; what the method changed stays (applied by
            :class:`~scripts.interactive.session.FrameRefiner`, which holds the network).
    """

    method: str = "geodesic"
    edge_weight: float = 300.0
    noise_floor: float = 2.5
    intensity_weight: float = 0.0
    intensity_tolerance: float = 0.1
    background_edges: bool = False
    smoothing: float = 1.0
    reach: float = 25.0
    scribble_reach: float = 10.0
    click_pixels: int = 4
    evidence: float = 6.0
    confidence_floor: float = 0.01
    band: int = 3
    prior_weight: float = 0.6
    shape_weight: float = 0.5
    shape_radius: float = 10.0
    lamda: float = 2.0
    sigma: float = 0.1
    learned: bool = False

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}.")
        if not 0.5 < self.prior_weight <= 1.0 or not 0.0 <= self.shape_weight <= 1.0:
            raise ValueError("prior_weight must lie in (0.5, 1] and shape_weight in [0, 1].")
        if not 0.0 < self.confidence_floor < 0.5:
            raise ValueError("confidence_floor must lie in (0, 0.5).")
        if self.reach <= 0 or min(self.edge_weight, self.smoothing, self.evidence, self.band, self.shape_radius) < 0:
            raise ValueError("reach must be positive; edge_weight, smoothing, evidence, band, shape_radius >= 0.")


def settings_for(kind: str, config: Mapping[str, Any] | None) -> RefinementSettings:
    """The settings of one kind of correction (``scribbles`` or ``clicks``) from ``config``, inference.json's
    ``interactive_refinement`` (``{kind: {field: value}}``); fields it leaves out keep their defaults.

    Raises:
        ValueError: an unknown kind, or a field that :class:`RefinementSettings` does not have (named).
    """
    if kind not in CORRECTION_KINDS:
        raise ValueError(f"kind must be one of {CORRECTION_KINDS}, got {kind!r}.")
    fields = dict((config or {}).get(kind) or {})
    known = {f.name for f in dataclasses.fields(RefinementSettings)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(
            f"interactive_refinement.{kind}: unknown setting(s) {unknown}; expected some of {sorted(known)}."
        )
    return RefinementSettings(**fields)


def _onehot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    return (labels[None] == np.arange(num_classes)[:, None, None]).astype(np.float32)


def _normalise(belief: np.ndarray) -> np.ndarray:
    belief = np.clip(belief, EPS, None)
    return belief / belief.sum(axis=0, keepdims=True)


def _softmax(log_belief: np.ndarray) -> np.ndarray:
    return _normalise(np.exp(log_belief - log_belief.max(axis=0, keepdims=True)))


def _disc(radius: int) -> np.ndarray:
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return yy**2 + xx**2 <= radius**2


def _smooth(image: np.ndarray, settings: RefinementSettings) -> np.ndarray:
    image = image.astype(np.float32)
    return ndimage.gaussian_filter(image, settings.smoothing) if settings.smoothing else image


def edge_costs(smooth: np.ndarray, settings: RefinementSettings) -> np.ndarray:
    """``H, W`` per-pixel cost of geodesic paths on the smoothed image: 1 in flat regions, more on edges."""
    gradient = np.hypot(ndimage.sobel(smooth, 0), ndimage.sobel(smooth, 1)) / 8.0  # intensity change per pixel
    floor = settings.noise_floor * float(np.median(gradient))
    return 1.0 + settings.edge_weight * np.maximum(gradient - floor, 0.0)


def spread_corrections(
    smooth: np.ndarray, prior: np.ndarray, seeds: np.ndarray, settings: RefinementSettings
) -> list[tuple[int, int, np.ndarray]]:
    """``[(given label, current label, weight H, W), ...]``, one per group of seeds with the same given label and
    the same current label at the seed.

    A group spreads only over pixels whose current label is the seed's (the same mistake, or the same right answer
    when the user confirms a label), along the cheapest path, a step costing 1 plus the edge term of
    :func:`edge_costs` plus ``intensity_weight`` times the pixel's intensity difference from the seeds' median
    beyond ``intensity_tolerance``; the weight is ``1 / (1 + exp((distance - reach) / (0.075 * reach)))`` (1 at the
    seed, 0 where the group cannot go), ``reach`` being ``settings.reach`` for a click and
    ``settings.scribble_reach`` for a scribble.
    """
    edges = edge_costs(smooth, settings)
    groups = []
    marked = seeds >= 0
    for given, current in sorted({(int(g), int(c)) for g, c in zip(seeds[marked], prior[marked], strict=True)}):
        own = marked & (seeds == given)
        sources = own & (prior == current)
        reach = settings.reach if sources.sum() <= settings.click_pixels else settings.scribble_reach
        if given == 0 and not settings.background_edges:
            costs = np.ones_like(edges)
        else:
            difference = np.abs(smooth - float(np.median(smooth[sources])))
            costs = edges + settings.intensity_weight * np.maximum(difference - settings.intensity_tolerance, 0.0)
        passable = np.where((prior == current) | own, costs, np.inf)
        distance, _ = MCP_Geometric(passable, fully_connected=True).find_costs([tuple(p) for p in np.argwhere(sources)])
        distance = np.nan_to_num(distance, nan=np.inf, posinf=np.inf)
        weight = (0.5 * (1.0 - np.tanh((distance - reach) / (0.15 * reach)))).astype(np.float32)
        groups.append((given, current, weight))
    return groups


def _cut(image: np.ndarray, foreground: np.ndarray, settings: RefinementSettings) -> np.ndarray:
    """Binary max-flow (numpymaxflow, as MONAI Label's scribbles use it): ``foreground`` probabilities ``H, W``,
    contrast-sensitive 8-connected pairwise term on ``image``."""
    foreground = np.clip(foreground, EPS, 1 - EPS).astype(np.float32)
    unary = np.stack([1.0 - foreground, foreground])
    return numpymaxflow.maxflow(image[None].astype(np.float32), unary, settings.lamda, settings.sigma, 8)[0] > 0.5


def snap_to_edges(image: np.ndarray, core: np.ndarray, allowed: np.ndarray, settings: RefinementSettings) -> np.ndarray:
    """``core`` grown within a band of ``settings.band`` pixels (of ``allowed`` pixels) around it, so its border moves
    onto the strongest image edge there (a graph cut, the core fixed, nearly neutral unaries in the band): the pixels
    on an edge's intensity ramp, which the geodesic paths do not reach, join the region they belong to."""
    if settings.band <= 0 or not core.any():
        return core
    band = ndimage.binary_dilation(core, structure=_disc(settings.band)) & allowed & ~core
    if not band.any():
        return core
    foreground = np.where(core, 1.0, 0.0)
    foreground[band] = 0.45  # a slight pull back: on a flat band the border stays where it was
    return (_cut(image, foreground, settings) & band) | core


def stn_shape_prior(network: Callable, divisor: int = 16) -> ShapePrior:
    """A :data:`ShapePrior` from a network with ``refine_logits`` (the bundle's STN): the probabilities' logarithm
    goes through ``refine_logits`` (which views it as ``softmax(log p / T)``, as in training), padded to a multiple
    of ``divisor`` with confident background (as the zero-padded image gives) and cropped back."""

    def prior(probs: np.ndarray) -> np.ndarray:
        k, h, w = probs.shape
        logits = torch.full((1, k, h - h % -divisor, w - w % -divisor), float(np.log(EPS)))
        logits[:, 0] = 0.0
        logits[0, :, :h, :w] = torch.from_numpy(np.log(np.clip(probs, EPS, 1.0)).astype(np.float32))
        device = next(iter(network.parameters()), torch.empty(0)).device if hasattr(network, "parameters") else "cpu"
        with torch.inference_mode():
            out = network.refine_logits(logits.to(device))
        return torch.softmax(out.float()[0, :, :h, :w], dim=0).cpu().numpy()

    return prior


def _graph_cut_method(
    image: np.ndarray, belief: np.ndarray, seeds: np.ndarray, settings: RefinementSettings
) -> np.ndarray:
    """Per corrected label ``l``: max-flow of ``l`` against the rest with ISeg unaries (the belief, seeds of ``l``
    foreground and other seeds background, fixed) and the contrast-sensitive pairwise term; pixels that leave ``l``
    fall to their next most likely class."""
    belief = belief.copy()
    for label in np.unique(seeds[seeds >= 0]):
        foreground = belief[label].copy()
        foreground[seeds == label] = 1.0
        foreground[(seeds >= 0) & (seeds != label)] = 0.0
        cut = _cut(image, foreground, settings)
        belief[label, ~cut] = np.minimum(belief[label, ~cut], EPS)
        belief[:, cut] = EPS
        belief[label, cut] = 1.0
    return _normalise(belief)


def refine_slice(
    image: np.ndarray,
    probs: np.ndarray,
    prior: np.ndarray,
    seeds: np.ndarray,
    shape_prior: ShapePrior | None = None,
    settings: RefinementSettings | None = None,
) -> np.ndarray:
    """New class probabilities ``K, H, W`` for one network-grid slice (see the module docstring for the inputs).

    Without seeds the result's argmax is ``prior``. ``shape_prior`` is needed by the ``shape`` method.
    """
    settings = settings or RefinementSettings()
    num_classes = probs.shape[0]
    if image.shape != prior.shape or seeds.shape != prior.shape or probs.shape[1:] != prior.shape:
        raise ValueError(
            f"image {image.shape}, probs {probs.shape}, prior {prior.shape} and seeds {seeds.shape} must share H, W."
        )
    w_prior = settings.prior_weight
    belief = _normalise(w_prior * _onehot(prior, num_classes) + (1 - w_prior) * probs)
    marked = seeds >= 0
    if not marked.any():
        return belief
    if settings.method == "graphcut":
        return _graph_cut_method(image, belief, seeds, settings)
    labels = prior.copy()
    log_belief = np.log(_normalise(np.maximum(belief, settings.confidence_floor)))
    for given, current, weight in spread_corrections(_smooth(image, settings), prior, seeds, settings):
        if given == current:
            continue
        boosted = log_belief.copy()
        boosted[given] += settings.evidence * weight
        core = (boosted.argmax(axis=0) == given) & (weight > 0.0) | (marked & (seeds == given) & (prior == current))
        region = snap_to_edges(image, core, prior == current, settings) & (prior == current)
        labels[region & ~marked] = given
    labels[marked] = seeds[marked]
    changed = labels != prior
    belief = _normalise(w_prior * _onehot(labels, num_classes) + (1 - w_prior) * probs)
    if settings.method == "shape" and changed.any() and settings.shape_weight > 0:
        if shape_prior is None:
            raise ValueError("the shape method needs a shape prior (the STN).")
        near = ndimage.distance_transform_edt(~changed) <= settings.shape_radius
        w = settings.shape_weight
        fused = _softmax((1 - w) * np.log(belief) + w * np.log(np.clip(shape_prior(belief), EPS, 1.0)))
        belief[:, near] = fused[:, near]
    belief[:, marked] = EPS
    belief[seeds[marked], *np.nonzero(marked)] = 1.0
    return _normalise(belief)
