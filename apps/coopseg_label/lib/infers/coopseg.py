"""The ``coopseg`` (FTN + STN) and ``coopseg_fast`` (FTN only) models: MONAI Label's ``BundleInferTask`` over the
bundle's ``inference.json``, with the weights chosen at each call so retrained weights go live at once.

A 4D cine (``H, W, slices, frames``) is segmented frame by frame, as the bundle does, and its label comes back 4D on
the input grid. Every result carries, in its params, the structure volumes, a cine's function indices and the
FTN-STN quality score (:mod:`lib.infers.results`), all from the one network pass.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.bundle import BundleInferTask
from monailabel.utils.others.class_utils import unload_module
from monailabel.utils.others.generic import name_to_device

from ..bundle_code import bundle_module
from ..errors import http_error, sentence, without_paths
from ..nrrd_writer import NRRD_SUFFIXES, save_nrrd
from .results import result_params

logger = logging.getLogger(__name__)

SCORES_KEY = "coopseg_frame_scores"
"""Per-frame quality scores of the request, kept in the data dict from the network pass to the result params."""


class CoopSegInferTask(BundleInferTask):
    """``BundleInferTask`` for the CoopSeg bundle.

    ``refine=True`` serves the STN-refined masks (``coopseg``), ``refine=False`` the FTN's alone
    (``coopseg_fast``): the bundle config's ``refine`` switch, which ``scripts.inference.inferer.CoopSegInferer`` reads.
    Each call uses the weights the bundle serves (``scripts.weights.find_weights``): ``models/model.pt`` (the
    bundle's ``network_def`` with these weights, loaded strictly) if it exists, else ``models/model.ts``
    (TorchScript); a changed file (fine-tuning) is reloaded. The result params hold
    ``volumes_ml``, ``function`` (cine) and ``quality`` (see :func:`lib.infers.results.result_params`).
    ``retain_cpu_memory=False`` sets the bundle config's switch of that name: the inferer leaves glibc's malloc alone.
    """

    def __init__(
        self, path: str, conf: dict[str, str], refine: bool = True, retain_cpu_memory: bool = True, **kwargs: Any
    ) -> None:
        super().__init__(path, conf, type=InferType.SEGMENTATION, load_strict=True, **kwargs)
        if not self.is_valid():
            raise FileNotFoundError(f"{path}: no configs/inference.json or no weights in models/.")
        self.refine = refine
        self.bundle_config["refine"] = refine
        if not retain_cpu_memory:
            self.bundle_config["retain_cpu_memory"] = False
        self.description = (
            "CoopSeg FTN + STN: the fast-thinking network's mask refined by the slow-thinking shape network"
            if refine
            else "CoopSeg FTN only: the fast-thinking network's mask, without shape refinement"
        )
        self._config.pop("model_filename", None)  # the app picks the live weights itself
        self._network_def: torch.nn.Module | None = self.network
        self._live: str | None = None

    def live_weights(self) -> Path | None:
        """The weights file served now, by the bundle's rule (None: no weights)."""
        bundle = Path(self.bundle_path)
        return bundle_module(bundle, "weights").find_weights(bundle / "models")

    def run_pre_transforms(self, data: dict[str, Any], transforms: Any) -> dict[str, Any]:
        # monai 1.6.1's Spacingd updates every "image_*" entry as a metadata dict, and MONAI Label's request holds
        # the string "image_path": keep such non-dict entries out of the way while the bundle's transforms run.
        prefix = f"{self.input_key}_"
        hidden = {k: data.pop(k) for k in list(data) if str(k).startswith(prefix) and not isinstance(data[k], dict)}
        data = super().run_pre_transforms(data, transforms)
        data.update(hidden)
        return data

    def _instantiate_network_def(self) -> torch.nn.Module:
        sys.path.insert(0, self.bundle_path)
        unload_module("scripts")
        try:
            return self.bundle_config.get_parsed_content(self.const.key_network_def(), instantiate=True)
        finally:
            sys.path.remove(self.bundle_path)

    def _get_network(self, device: str, data: Any) -> torch.nn.Module:
        live = self.live_weights()
        if live is None:
            raise http_error(
                503, sentence("no trained weights in the served bundle", fix="see GET /info/"), str(self.bundle_path)
            )
        if live.suffix == ".pt":
            if self._network_def is None:
                self._network_def = self._instantiate_network_def()
            self.network = self._network_def
        else:
            self.network = None  # BasicInferTask then loads TorchScript
        self.path = [str(live)]
        if self._live != str(live):
            self.clear_cache()
            self._live = str(live)
            logger.info("%s serves %s", self.description.split(":")[0], live)
        try:
            return super()._get_network(device, None)
        except RuntimeError as e:  # load_state_dict (strict) or torch.jit.load
            first = without_paths(" ".join(str(e).split()))[:90] or type(e).__name__
            raise http_error(
                503,
                sentence(
                    f"weights {live.name} do not fit the bundle's network ({first})",
                    fix="retrain or replace the bundle's models/ file",
                ),
                f"{live}: {e}",
            ) from e

    def uncertainty_scores(self, image_path: str, device: str | None = None) -> dict[str, float]:
        """Mean FTN-STN disagreement and mean normalised entropy over the resampled volume (for active learning)."""
        device = name_to_device(device)
        data: dict[str, Any] = {"image": image_path, "image_path": image_path, "device": device}
        data = self.run_pre_transforms(data, self.pre_transforms(data))
        network = self._get_network(device, data)
        inferer = self.inferer(data)
        inputs = torch.as_tensor(data[self.input_key])[None].to(torch.device(device))
        with torch.no_grad():
            maps = inferer.predict(inputs, network, maps=("uncertainty", "disagreement"))
        return {
            "disagreement": float(maps["disagreement"].mean()),
            "entropy": float(maps["uncertainty"].mean()),
            "weights": os.path.basename(self.path[0]),
        }

    # one network pass: the mask and, when refining, each frame's FTN-STN quality scores ---------------------------
    def run_inferer(self, data: dict[str, Any], convert_to_batch: bool = True, device: str = "cuda") -> dict[str, Any]:
        inferer = self.inferer(data)
        network = self._get_network(device, data)
        parts = hasattr(network, "segment") and hasattr(network, "refine_logits")
        if not (self.refine and parts and hasattr(inferer, "predict") and convert_to_batch):
            data[SCORES_KEY] = None
            return super().run_inferer(data, convert_to_batch, device)
        ftn_prob = bundle_module(Path(self.bundle_path), "inference.inferer").FTN_PROB
        inputs = data[self.input_key]
        inputs = (inputs if torch.is_tensor(inputs) else torch.from_numpy(inputs))[None].to(torch.device(device))
        with torch.no_grad():
            outputs = inferer.predict(inputs, network, maps=(ftn_prob,))
        quality = bundle_module(Path(self.bundle_path), "inference.quality")
        scores = quality.frame_quality_scores(outputs.pop(ftn_prob), outputs["pred"], inputs.shape[1])
        data[SCORES_KEY] = {key: values[0].tolist() for key, values in scores.items()}
        data[self.output_label_key] = outputs["pred"][0]
        return data

    def _no_score_reason(self) -> str:
        if not self.refine:
            return "coopseg_fast runs the FTN alone; the score compares the FTN with the STN (model coopseg)."
        return "the served network gives no FTN-STN disagreement."

    def writer(self, data: dict[str, Any], extension: str | None = None, dtype: Any = None) -> tuple[Any, Any]:
        """MONAI Label's writer for a 3D label; a cine's ``F, H, W, D`` label as a 4D file ``H, W, D, F`` on the
        image's affine: NIfTI, or NRRD when the request's ``result_extension`` asks for it (OHIF's MONAI Label panel
        does, and shows the first ``H * W * D`` values: frame 0). Both with the result params of
        :func:`lib.infers.results.result_params`."""
        label = data[self.output_label_key]
        values = label.detach().cpu().numpy() if torch.is_tensor(label) else np.asarray(label)
        meta = data.get(f"{self.output_label_key}_meta_dict") or {}
        affine = meta.get("affine")
        affine = np.asarray(affine if affine is not None else getattr(label, "affine", np.eye(4)), dtype=np.float64)
        case = str(data.get("image_id") or Path(str(data.get("image_path", "image"))).name)
        threshold = self.bundle_config.get("quality_threshold")
        params = result_params(
            Path(self.bundle_path), values, affine, case, data.get(SCORES_KEY), threshold, self._no_score_reason()
        )
        result = data.get(self.output_json_key)
        data[self.output_json_key] = {**(result if isinstance(result, dict) else {}), **params}
        if values.ndim != 4:
            return super().writer(data, extension, dtype)
        requested = str(data.get("result_extension") or "").lower()
        suffix = requested if requested in NRRD_SUFFIXES else ".nii.gz"
        with tempfile.NamedTemporaryFile(suffix=suffix, delete=False) as f:
            path = f.name
        codes = np.moveaxis(values, 0, -1).astype(np.uint8)
        if suffix in NRRD_SUFFIXES:
            save_nrrd(codes, affine, path, compress=bool(data.get("result_compress", False)))
        else:
            bundle_module(Path(self.bundle_path), "data.nifti").write_nifti(codes, affine, path)
        return path, data[self.output_json_key]
