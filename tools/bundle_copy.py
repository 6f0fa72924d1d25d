"""Working copies of the bundle for tests and benchmarks, and its inference workflow on them.

A copy holds the bundle's ``configs`` and ``scripts`` and a ``models/model.pt``, so a test or benchmark can change
configs or weights without touching the repository's bundle.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import torch

from tools import BUNDLE

logger = logging.getLogger(__name__)


def copy_bundle(root: Path, weights: Path | None = None, seed: int = 0) -> Path:
    """``root/bundle``: configs and scripts of the repository's bundle, and ``models/model.pt``.

    The weights are ``weights`` (a state dict) when given and they fit the network; otherwise a fresh network
    initialised from ``seed`` (logged, so a benchmark says which it timed).
    """
    from scripts.model.networks import CoopSegNet

    bundle = Path(root) / "bundle"
    shutil.copytree(BUNDLE / "configs", bundle / "configs")
    shutil.copytree(BUNDLE / "scripts", bundle / "scripts", ignore=shutil.ignore_patterns("__pycache__"))
    (bundle / "models").mkdir(parents=True)
    torch.manual_seed(seed)
    net = CoopSegNet()
    if weights is not None:
        try:
            net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
            logger.info("weights: %s", weights)
        except (OSError, RuntimeError) as err:  # missing, or of another network version
            logger.info("weights: fresh initialisation (%s: %s)", weights, str(err).splitlines()[0])
    torch.save(net.state_dict(), bundle / "models" / "model.pt")
    return bundle


def bundle_files(bundle: Path, config: str = "inference.json") -> dict[str, str]:
    """The file arguments of ``monai.bundle run`` / ``ConfigWorkflow`` for ``bundle`` and one of its configs."""
    return {
        "config_file": str(bundle / "configs" / config),
        "meta_file": str(bundle / "configs" / "metadata.json"),
        "logging_file": str(bundle / "configs" / "logging.conf"),
        "bundle_root": str(bundle),
    }


def inference_workflow(bundle: Path, dataset_dir: Path, output_dir: Path, **overrides: Any):
    """The bundle's inference workflow as ``monai.bundle run`` builds it (a ``ConfigWorkflow``, not initialised)."""
    from monai.bundle import ConfigWorkflow

    return ConfigWorkflow(
        workflow_type="infer", dataset_dir=str(dataset_dir), output_dir=str(output_dir), **bundle_files(bundle),
        **overrides,
    )  # fmt: skip
