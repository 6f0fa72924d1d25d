"""CoopSeg bundle code: cooperative training and latent space data augmentation (Chen et al., MICCAI 2021).

Subpackages follow the data flow (image -> preprocessing -> FTN -> latent masking -> decoders -> STN -> losses ->
trainer; inference is the same path without masking and losses):

* ``model``: the networks (FTN, STN) and latent-code masking;
* ``engine``: the cooperative loss terms of one iteration, the MONAI trainer and evaluator, handlers, schedules,
  resumable checkpoints and multi-process helpers;
* ``inference``: inputs -> network -> inferer -> outputs of the inference workflow;
* ``data``: the synthetic phantom, datalists, the slice dataset, augmentation and the ACDC / M&Ms / ACDC-C adapters;
* ``evaluation``: per-volume metrics, test-set evaluation and its reports.

Shared by all: ``labels`` (label codes, names, colours from ``configs/metadata.json``), ``volumes`` (reading and
checking volumes), ``weights`` (which weights file is served), ``files`` (atomic writes), ``cpu_memory``, and
``export`` (ONNX). Nothing is imported eagerly: configs name what they use by ``_target_``.
"""

from pathlib import Path

__all__ = ["bundle_root"]


def bundle_root() -> str:
    """Absolute path of this bundle (the folder holding ``configs/``, ``scripts/`` and ``models/``).

    Configs use it as the default ``bundle_root``, so outputs land inside the bundle whatever the working directory.
    """
    return str(Path(__file__).resolve().parent.parent)
