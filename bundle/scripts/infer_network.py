"""The inference network: ``models/model.pt`` (flat state dict) in ``network_def``, else ``models/model.ts``."""

from __future__ import annotations

import logging
import os

import torch

__all__ = ["NoWeightsError", "weights_file", "load_inference_network"]

logger = logging.getLogger(__name__)


class NoWeightsError(FileNotFoundError):
    """Neither trained weights file exists; the message says where they were looked for and how to get them."""


def weights_file(model_file: str, torchscript_file: str) -> str:
    """The file inference uses: ``model_file`` if present, else ``torchscript_file``; raises :class:`NoWeightsError`."""
    for path in (model_file, torchscript_file):
        if path and os.path.isfile(path):
            return path
    raise NoWeightsError(
        f"no trained weights: neither {model_file} nor {torchscript_file} exists. Train the bundle first "
        "(python -m monai.bundle run training --config_file bundle/configs/train.json), download the pretrained "
        "bundle, or pass --model_file <checkpoint.pt>."
    )


def load_inference_network(
    network_def: torch.nn.Module, model_file: str, torchscript_file: str = "", device: str | torch.device = "cpu"
) -> torch.nn.Module:
    """``network_def`` with the weights of ``model_file`` (strict), or the TorchScript ``torchscript_file``.

    Both give a module with ``segment(x)`` (FTN logits) and ``refine_logits(logits)`` (STN), which is what
    :class:`scripts.inferers.CoopSegInferer` calls. The module is returned in eval mode on ``device``.
    """
    path = weights_file(model_file, torchscript_file)
    device = torch.device(device)
    if path == model_file:
        state = torch.load(path, map_location=device, weights_only=True)
        if not isinstance(state, dict) or not state:
            raise ValueError(f"{path}: expected a flat state dict of the network (tensors by parameter name).")
        try:
            network_def.load_state_dict(state)
        except RuntimeError as e:
            raise ValueError(
                f"{path} does not fit network_def (a checkpoint of another width or class count?): {e}"
            ) from e
        network = network_def.to(device)
        logger.info("inference weights: %s", path)
    else:
        network = torch.jit.load(path, map_location=device)
        logger.info("inference weights: %s (TorchScript; %s not found)", path, model_file)
    return network.eval()
