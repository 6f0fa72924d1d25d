"""CoopSeg bundle code: cooperative training and latent space data augmentation (Chen et al., MICCAI 2021).

Modules: ``networks`` (FTN + STN), ``masking`` (latent masking schemes), ``losses`` and ``cooperative`` (the loss
terms of one iteration), ``trainer`` (MONAI trainer/evaluator), ``transforms``, ``handlers``, ``metrics`` and
``data`` (phantom generator, datalists, slice dataset).
"""

from pathlib import Path

from . import cooperative, data, handlers, losses, masking, metrics, networks, norm_context, trainer, transforms

__all__ = [
    "bundle_root",
    "cooperative",
    "data",
    "handlers",
    "losses",
    "masking",
    "metrics",
    "networks",
    "norm_context",
    "trainer",
    "transforms",
]


def bundle_root() -> str:
    """Absolute path of this bundle (the folder holding ``configs/``, ``scripts/`` and ``models/``).

    Configs use it as the default ``bundle_root``, so outputs land inside the bundle whatever the working directory.
    """
    return str(Path(__file__).resolve().parent.parent)
