"""Interactive models: the user's scribbles (``coopseg_scribbles``) or clicks (``coopseg_clicks``) correct the mask
of the slices they touch, with the bundle's refinement (``scripts.interactive``: the model's own FTN + STN
probabilities and the STN's shape prior).

Requests, as the MONAI Label Slicer plugin sends them (voxel indices ``i, j, k`` of the image, ``k`` the slice):

* ``coopseg_scribbles`` (type ``scribbles``): the ``label`` file is the label map Slicer exports from its segments
  (the current ``lv`` / ``myocardium`` / ``rv`` mask with the ``foreground_scribbles`` and ``background_scribbles``
  painted over it), ``label_info`` ``[{"name", "id"}, ...]`` says which value is which segment, and
  ``selected_label_name`` which structure the scribbles correct: foreground scribbles mark it, background scribbles
  mark "not it". The result is that structure's mask (1 inside), as Slicer imports it into the selected segment.
* ``coopseg_clicks`` (type ``deepgrow``, 2D): ``label`` (the selected structure) with ``foreground`` and
  ``background`` point lists ``[[i, j, k], ...]`` and the current ``slice``; the result is the selected structure's
  mask. Per-label point lists (``{"lv": [[i, j, k], ...], "rv": [...], "background": [...]}``) are accepted too, and
  return the whole mask (codes 0-3); with them the current mask may come as the ``label`` file (in the DeepGrow form
  ``label`` names the structure).

The mask being corrected (the prior) is the request's ``label`` file for scribbles (its structure voxels) or, for
clicks, a ``label`` file sent with the request; otherwise the datastore's label of the image (``final``, else
``original``: the automatic mask that ``/batch/infer/coopseg`` or ``save_label`` stores). For a 4D cine the request
names the ``frame`` (or points carry it as a fourth index); only that frame changes, and a label file of that one
frame gives a result of that frame. ``result_labels: "all"`` asks for
the whole mask in every case. Slices without a correction come back as they were.

Bad requests get an HTTP 422 naming the cause before any network runs: corrections outside the image, a label the model
does not know, no prior mask, an empty scribble or no click. Nothing is written to the datastore.
"""

from __future__ import annotations

import copy
import logging
import os
import tempfile
import threading
import time
from collections import OrderedDict, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from monailabel.interfaces.datastore import Datastore, DefaultLabelTag
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.utils.others.generic import name_to_device
from scipy import ndimage

from ..bundle_code import bundle_module
from ..errors import http_error
from .coopseg import CoopSegInferTask

logger = logging.getLogger(__name__)

FOREGROUND_SCRIBBLES = "foreground_scribbles"
BACKGROUND_SCRIBBLES = "background_scribbles"
METHOD_DESCRIPTIONS = {
    "shape": "the model's FTN + STN probabilities, spread along image edges, and the STN shape prior",
    "geodesic": "the model's FTN + STN probabilities, spread along image edges",
    "graphcut": "a graph cut on the model's FTN + STN probabilities",
}
"""How each refinement method of the bundle (``inference.json``'s ``interactive_refinement``) is described to users."""

Marks = dict[tuple[int, int], list[tuple[int, bool, np.ndarray]]]
"""``(frame, slice) -> [(label code, excluded, pixels N x 2), ...]``: ``excluded`` marks say "not this label"."""

SESSION_IMAGES = 4
"""Images whose preprocessed frames and slice probabilities are kept between corrections (a user corrects one image
many times in a row)."""


class _Sessions:
    """A small LRU of ``key -> {"image", "shape", "frames", "refiners"}``, safe for MONAI Label's worker threads."""

    def __init__(self, size: int = SESSION_IMAGES) -> None:
        self.size = size
        self._items: OrderedDict[tuple, dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple) -> dict[str, Any] | None:
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
            return item

    def put(self, key: tuple, item: dict[str, Any]) -> None:
        with self._lock:
            self._items[key] = item
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)


def _points(value: Any, key: str) -> list[list[int]]:
    """A point list ``[[i, j, k(, frame)], ...]`` of integers; 422 otherwise."""
    if not isinstance(value, (list, tuple)):
        raise http_error(422, f"'{key}' must be a list of points [i, j, k]; got {type(value).__name__}.")
    points = []
    for point in value:
        if (
            not isinstance(point, (list, tuple))
            or len(point) not in (3, 4)
            or not all(isinstance(v, (int, float)) and float(v).is_integer() for v in point)
        ):
            raise http_error(
                422, f"'{key}': {point!r} is not a point [i, j, k] (or [i, j, k, frame]) of voxel indices."
            )
        points.append([int(v) for v in point])
    return points


def _looks_like_points(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(p, (list, tuple)) for p in value)


class CoopSegInteractiveTask(CoopSegInferTask):
    """``coopseg_scribbles`` (``kind="scribbles"``) or ``coopseg_clicks`` (``kind="clicks"``); see the module
    docstring. ``datastore`` returns the app's datastore (where the prior mask of an image is looked up)."""

    def __init__(self, path: str, conf: dict[str, str], kind: str, datastore: Callable[[], Datastore]) -> None:
        super().__init__(path, conf, refine=True)
        # inference.json's interactive_refinement for this kind: an unknown kind or a bad setting stops the app at
        # start, naming it
        refinement = bundle_module(Path(path), "interactive.refinement")
        self._refinement = refinement.settings_for(kind, self.bundle_config.get("interactive_refinement"))
        self.kind = kind
        self.type = InferType.SCRIBBLES if kind == "scribbles" else InferType.DEEPGROW
        self.dimension = 2
        how = METHOD_DESCRIPTIONS.get(self._refinement.method, f"the {self._refinement.method} refinement")
        self.description = (
            f"CoopSeg scribbles: foreground / background scribbles of the selected structure correct the slices they "
            f"touch ({how})"
            if kind == "scribbles"
            else f"CoopSeg clicks: foreground / background clicks of the selected structure correct the slice ({how})"
        )
        self._datastore = datastore
        self._sessions = _Sessions()
        self._config.pop("model_filename", None)
        labels = bundle_module(Path(path), "labels").LABELS
        self.codes = {label.name: label.code for label in labels}
        self._correction_network = None
        if self._refinement.learned:  # a missing or wrong file stops the app at start, naming it
            module = bundle_module(Path(path), "interactive.correction_network")
            weights = Path(path) / "models" / "correction_net.pt"
            self._correction_network = module.load_correction_network(weights, len(labels) + 1)

    def refinement_settings(self) -> Any:
        """The bundle's refinement settings for this kind of correction (``RefinementSettings``)."""
        return self._refinement

    # requests ----------------------------------------------------------------------------------------------------
    def _code(self, name: Any, what: str, allow_background: bool = False) -> int:
        known = {**self.codes, **({"background": 0} if allow_background else {})}
        if not isinstance(name, str) or name.lower() not in known:
            raise http_error(422, f"{what} {name!r} is not a label of this model; labels are {', '.join(known)}.")
        return known[name.lower()]

    def _frame_param(self, request: dict[str, Any], frames: int) -> int | None:
        frame = request.get("frame")
        if frame is None:
            return 0 if frames == 1 else None
        if not isinstance(frame, int) or not 0 <= frame < frames:
            raise http_error(422, f"frame {frame!r} is outside the image's frames 0..{frames - 1}.")
        return frame

    def _click_marks(
        self, request: dict[str, Any], shape: tuple[int, int, int], frames: int
    ) -> tuple[Marks, int | None]:
        """Marks from a DeepGrow request (``label``, ``foreground``, ``background``) or per-label point lists, and
        the selected label's code (None for per-label lists)."""
        frame = self._frame_param(request, frames)
        lists: list[tuple[str, int, bool, list[list[int]]]] = []
        if "foreground" in request:
            selected = self._code(request.get("label"), "selected label")
            lists.append(("foreground", selected, False, _points(request.get("foreground") or [], "foreground")))
            lists.append(("background", selected, True, _points(request.get("background") or [], "background")))
        else:
            selected = None
            for key, value in request.items():
                if key in ("label", "roi", "label_info", "slice", "frame", "device") or not _looks_like_points(value):
                    continue
                lists.append(
                    (key, self._code(key, "clicks of label", allow_background=True), False, _points(value, key))
                )
        on_slice = request.get("slice")
        marks: Marks = defaultdict(list)
        for key, code, excluded, points in lists:
            for point in points:
                f = point[3] if len(point) == 4 else frame
                if f is None:
                    raise http_error(
                        422,
                        f"the image is a cine of {frames} frames: give the 'frame' of the clicks (or [i, j, k, f]).",
                    )
                inside = all(0 <= v < n for v, n in zip(point[:3], shape, strict=True)) and 0 <= f < frames
                if not inside:
                    raise http_error(
                        422,
                        f"click {point} of '{key}' lies outside the image ({' x '.join(map(str, shape))} voxels, "
                        f"{frames} frame(s)).",
                    )
                if on_slice is not None and point[2] != on_slice:
                    raise http_error(422, f"click {point} of '{key}' is not on the request's slice {on_slice}.")
                marks[(f, point[2])].append((code, excluded, np.array([point[:2]])))
        if not marks:
            raise http_error(422, "no clicks in the request: give foreground or background points [i, j, k].")
        return marks, selected

    def _load_label(self, path: str, what: str) -> np.ndarray:
        """A label file as ``C, H, W, D`` integers (C = 1, or the frames of a cine); 422 if unreadable."""
        volumes = bundle_module(Path(self.bundle_path), "volumes")
        try:
            array = np.asarray(volumes.load_volume(path, what))
        except volumes.VolumeError as e:
            raise http_error(422, str(e)) from e
        if array.ndim != 4 or not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise http_error(422, f"{what}: expected a 3D or 4D label map of integer values.")
        return array.astype(np.int32)

    def _fit(
        self, array: np.ndarray, shape: tuple[int, int, int], frames: int, frame: int | None, what: str
    ) -> tuple[np.ndarray, list[int]]:
        """``(H, W, D, F, the frames it covers)`` from a loaded ``C, H, W, D`` label of the image's grid: C = F (all
        frames), or C = 1 for the one frame ``frame`` (the others stay 0)."""
        if tuple(array.shape[1:]) != shape:
            raise http_error(
                422, f"{what} has shape {tuple(array.shape[1:])}; the image is {' x '.join(map(str, shape))}."
            )
        if array.shape[0] == frames:
            return np.moveaxis(array, 0, -1), list(range(frames))
        if array.shape[0] == 1 and frame is not None:
            out = np.zeros((*shape, frames), dtype=array.dtype)
            out[..., frame] = array[0]
            return out, [frame]
        raise http_error(
            422,
            f"{what} has {array.shape[0]} frame(s); the image has {frames}: send one per frame, or one and 'frame'.",
        )

    def _stored_prior(
        self, image_id: str | None, shape: tuple[int, int, int], frames: int
    ) -> tuple[np.ndarray, list[int], str]:
        datastore = self._datastore()
        for tag in (DefaultLabelTag.FINAL.value, DefaultLabelTag.ORIGINAL.value):
            if not image_id or datastore is None:
                break
            try:
                label_id = datastore.get_label_by_image_id(image_id, tag)
                uri = datastore.get_label_uri(label_id, tag) if label_id else ""
            except Exception:  # a remote datastore without that label
                uri = ""
            if uri and os.path.exists(uri):
                array = self._load_label(uri, f"stored label '{tag}' of image '{image_id}'")
                prior, covered = self._fit(array, shape, frames, None, f"stored label '{tag}' of image '{image_id}'")
                self._check_codes(prior, f"stored label '{tag}' of image '{image_id}'")
                return prior, covered, f"datastore label '{tag}'"
        raise http_error(
            422,
            f"image '{image_id}' has no prior mask to correct: run /infer/coopseg with save_label (or "
            "/batch/infer/coopseg), submit a label, or send the current mask as the label file.",
        )

    def _check_codes(self, prior: np.ndarray, what: str) -> None:
        bad = sorted(set(np.unique(prior).tolist()) - {0, *self.codes.values()})
        if bad:
            raise http_error(422, f"{what} holds values {bad[:8]}; expected codes 0-{max(self.codes.values())}.")

    def _scribble_marks(
        self, request: dict[str, Any], shape: tuple[int, int, int], frames: int
    ) -> tuple[Marks, int, np.ndarray | None, list[int]]:
        """Marks, the selected label's code, the prior from the request's label map (None when it holds no
        structure voxel) and the frames the map covers."""
        if not request.get("label"):
            raise http_error(422, "no scribbles: send the label map with the scribbles as the 'label' file.")
        info = request.get("label_info")
        if not isinstance(info, list) or not info:
            raise http_error(422, '\'label_info\' ([{"name": ..., "id": ...}, ...]) is needed to read the label map.')
        frame = self._frame_param(request, frames)
        array = self._load_label(request["label"], "scribbles label map")
        volume, covered = self._fit(array, shape, frames, frame, "scribbles label map")
        ids: dict[int, str] = {}
        for item in info:
            value = item.get("id", item.get("idx")) if isinstance(item, dict) else None
            if not isinstance(value, int) or not isinstance(item.get("name"), str):
                raise http_error(422, f"label_info entry {item!r} needs a 'name' and an integer 'id'.")
            ids[value] = item["name"].lower()
        present = set(np.unique(volume).tolist()) - {0}
        unnamed = sorted(present - set(ids))
        if unnamed:
            raise http_error(422, f"the label map holds values {unnamed[:8]} that label_info does not name.")
        allowed = {*self.codes, "background", FOREGROUND_SCRIBBLES, BACKGROUND_SCRIBBLES}
        unknown = sorted({ids[v] for v in present} - allowed)
        if unknown:
            raise http_error(
                422,
                f"the label map holds segments {unknown} that are not labels of this model ({', '.join(self.codes)}).",
            )
        scribble_ids = {v: n for v, n in ids.items() if n in (FOREGROUND_SCRIBBLES, BACKGROUND_SCRIBBLES)}
        scribbled = np.isin(volume, list(scribble_ids))
        if not scribbled.any():
            raise http_error(
                422, "empty scribble: the label map holds no foreground_scribbles or background_scribbles voxel."
            )
        selected = self._code(request.get("selected_label_name"), "selected_label_name")
        prior = np.zeros(volume.shape, dtype=np.int32)
        structures = False
        for value, name in ids.items():
            if name in self.codes:
                inside = volume == value
                prior[inside] = self.codes[name]
                structures |= bool(inside.any())
        marks: Marks = defaultdict(list)
        for f, k in sorted({(int(f), int(k)) for k, f in zip(*np.nonzero(scribbled)[2:], strict=True)}):
            plane = volume[:, :, k, f]
            for value, name in scribble_ids.items():
                pixels = np.argwhere(plane == value)
                if len(pixels):
                    marks[(f, k)].append((selected, name == BACKGROUND_SCRIBBLES, pixels))
            if structures:  # under a scribble the mask is hidden: take the nearest unscribbled pixel's label
                hidden = np.isin(plane, list(scribble_ids))
                _, nearest = ndimage.distance_transform_edt(hidden, return_indices=True)
                prior[:, :, k, f] = prior[nearest[0], nearest[1], k, f]
        return marks, selected, (prior if structures else None), covered

    # inference ---------------------------------------------------------------------------------------------------
    def _session_key(self, image_path: Any, device: str) -> tuple | None:
        """What a cached session must match: the image file (path, size, time) and the live weights file."""
        weights = self.live_weights()
        if not isinstance(image_path, str) or not os.path.exists(image_path) or weights is None:
            return None
        image_stat, weights_stat = os.stat(image_path), os.stat(weights)
        return (
            os.path.realpath(image_path), image_stat.st_size, image_stat.st_mtime_ns, str(weights),
            weights_stat.st_mtime_ns, device,
        )  # fmt: skip

    def __call__(self, request: dict[str, Any], callbacks: Any = None) -> tuple[str, dict[str, Any]]:
        begin = time.perf_counter()
        req = {**copy.deepcopy(self._config), **request}
        device = name_to_device(req.get("device", "cuda"))
        image_path = req["image"]
        image_id = req.get("image_id")
        key = self._session_key(image_path, device)
        session = self._sessions.get(key) if key else None
        cached = session is not None
        if session is None:
            data: dict[str, Any] = {"image": image_path, "image_path": image_path, "device": device}
            image = self.run_pre_transforms(data, self.pre_transforms(data))[self.input_key]
            shape = tuple(int(s) for s in image.meta["spatial_shape"])[:3]
            session = {"image": image, "shape": shape, "frames": int(image.shape[0]), "refiners": {}}
        image, shape, frames = session["image"], session["shape"], session["frames"]
        if self.kind == "scribbles":
            marks, selected, prior, covered = self._scribble_marks(req, shape, frames)
            source = "request label map"
        else:
            marks, selected = self._click_marks(req, shape, frames)
            prior, covered, source = None, [], ""
            if "foreground" not in req and isinstance(req.get("label"), str) and os.path.isfile(req["label"]):
                array = self._load_label(req["label"], "label file")
                prior, covered = self._fit(array, shape, frames, self._frame_param(req, frames), "label file")
                self._check_codes(prior, "label file")
                source = "request label file"
        if prior is None:
            prior, covered, source = self._stored_prior(image_id, shape, frames)
        outside = sorted({f for f, _ in marks} - set(covered))
        if outside:
            raise http_error(422, f"corrections on frame(s) {outside}, but the mask sent covers frame(s) {covered}.")
        start = time.perf_counter()
        network = self._get_network(device, {})
        result = prior.copy()
        corrected = []
        for f in sorted({f for f, _ in marks}):
            refiner = session["refiners"].get(f)
            if refiner is None:
                module = bundle_module(Path(self.bundle_path), "interactive.session")
                inferer = self.inferer({"device": device})
                refiner = module.FrameRefiner.from_preprocessed(
                    image,
                    f,
                    shape,
                    network,
                    settings=self.refinement_settings(),
                    inferer=inferer,
                    correction_network=self._correction_network,
                )
                session["refiners"][f] = refiner
            slices = sorted(k for g, k in marks if g == f)
            refiner.precompute(slices)
            for k in slices:
                seeds = np.full(shape[:2], -1, dtype=np.int16)
                for code, excluded, pixels in marks[(f, k)]:
                    labels = refiner.resolve_excluded(k, pixels, code, prior[:, :, k, f]) if excluded else code
                    seeds[pixels[:, 0], pixels[:, 1]] = labels
                result[:, :, k, f] = refiner.refine(k, prior[:, :, k, f].astype(np.uint8), seeds)
                changed = int((result[:, :, k, f] != prior[:, :, k, f]).sum())
                corrected.append({"frame": f, "slice": k, "changed_voxels": changed})
        refine_s = time.perf_counter() - start
        if key:
            self._sessions.put(key, session)
        if str(req.get("result_labels", "")).lower() == "all":
            selected = None
        values = result[..., covered] if len(covered) > 1 else result[..., covered[0]]
        if selected is not None:
            values = values == selected
            names = {name: 1 for name, code in self.codes.items() if code == selected}
        else:
            names = dict(self.codes)
        with tempfile.NamedTemporaryFile(suffix=".nii.gz", delete=False) as f:
            path = f.name
        affine = np.asarray(image.meta.get("original_affine", image.affine), dtype=np.float64)
        bundle_module(Path(self.bundle_path), "data.nifti").write_nifti(
            np.asarray(values, dtype=np.uint8), affine, path
        )
        total = time.perf_counter() - begin
        logger.info("%s: %s on %s in %.3f s (refinement %.3f s)", self.kind, corrected, image_id, total, refine_s)
        params = {
            "label_names": names,
            "corrected": corrected,
            "prior": source,
            "cached": cached,
            "latencies": {"refine": round(refine_s, 3), "total": round(total, 3)},
        }
        return path, params


def interactive_tasks(path: str, conf: dict[str, str], datastore: Callable[[], Datastore]) -> dict[str, Any]:
    """``{"coopseg_scribbles": ..., "coopseg_clicks": ...}`` for the app's ``init_infers``."""
    kinds = bundle_module(Path(path), "interactive.refinement").CORRECTION_KINDS
    return {f"coopseg_{kind}": CoopSegInteractiveTask(path, conf, kind, datastore) for kind in kinds}
