"""The inference network: ``network_def`` with the weights of ``model_file``, else the TorchScript export."""

from __future__ import annotations

import logging

import torch

from ..weights import load_weights, require_weights

__all__ = ["load_inference_network"]

logger = logging.getLogger(__name__)


def load_inference_network(
    network_def: torch.nn.Module, model_file: str, torchscript_file: str = "", device: str | torch.device = "cpu"
) -> torch.nn.Module:
    """``network_def`` with the weights of ``model_file`` (strict), or the TorchScript ``torchscript_file``.

    Both give a module with ``segment(x)`` (FTN logits) and ``refine_logits(logits)`` (STN), which is what
    :class:`scripts.inference.inferer.CoopSegInferer` calls. The module is returned in eval mode on ``device``.
    Raises :class:`scripts.weights.NoWeightsError` when neither file exists.
    """
    path = require_weights(model_file, torchscript_file)
    device = torch.device(device)
    if str(path) == str(model_file):
        network = load_weights(network_def, path, device).to(device)
    else:
        network = torch.jit.load(str(path), map_location=device)
        logger.info("inference weights: %s (TorchScript; %s not found)", path, model_file)
    return network.eval()
