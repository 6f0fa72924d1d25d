"""Which trained weights a bundle serves, and loading them: ``models/model.pt``, else ``models/model.ts``.

``model.pt`` is a flat state dict of ``network_def`` (all five parts: ``image_encoder.*`` ... ``shape_decoder.*``);
``model.ts`` is its TorchScript export (``ckpt_export``), used when a downloaded bundle ships only that. Inference,
evaluation, the release tool and the MONAI Label app all resolve weights here.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

__all__ = ["WEIGHT_FILES", "NoWeightsError", "find_weights", "load_state_dict", "load_weights", "require_weights"]

logger = logging.getLogger(__name__)

WEIGHT_FILES = ("model.pt", "model.ts")
"""In order of preference, inside a bundle's ``models/``."""


class NoWeightsError(FileNotFoundError):
    """No trained weights; the message says where they were looked for and how to get them."""


def find_weights(models_dir: str | os.PathLike) -> Path | None:
    """``models_dir/model.pt`` if it exists, else ``models_dir/model.ts``, else None."""
    for name in WEIGHT_FILES:
        path = Path(models_dir) / name
        if path.is_file():
            return path
    return None


def require_weights(*candidates: str | os.PathLike | None, option: str = "--model_file") -> Path:
    """The first existing file of ``candidates`` (e.g. ``model.pt``, ``model.ts``); raises :class:`NoWeightsError`
    naming them and the command-line ``option`` that selects other weights."""
    for path in candidates:
        if path and Path(path).is_file():
            return Path(path)
    names = " nor ".join(str(p) for p in candidates if p) or "(no file given)"
    raise NoWeightsError(
        f"no trained weights: {names} not found. Train the bundle first (python -m monai.bundle run training "
        f"--config_file <bundle>/configs/train.json), download the pretrained bundle, or pass {option} <model.pt>."
    )


def load_state_dict(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The flat state dict in ``path``: a ``.pt`` checkpoint as saved, or the state of a TorchScript ``.ts``."""
    path = Path(path)
    if path.suffix == ".ts":
        return dict(torch.jit.load(str(path), map_location=map_location).state_dict())
    state = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a flat state dict of the network (tensors by parameter name).")
    return state


def load_weights(
    network: torch.nn.Module, path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> torch.nn.Module:
    """Load ``path`` (:func:`load_state_dict`) into ``network`` strictly; returns ``network``.

    A checkpoint of another network version or width raises ``ValueError`` saying so and how to fix it.
    """
    state = load_state_dict(path, map_location)
    try:
        getattr(network, "module", network).load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(
            f"{path} does not fit network_def: pass the settings it was trained with (e.g. --width) or weights of "
            f"this code version.\n{e}"
        ) from e
    logger.info("loaded weights %s", path)
    return network
