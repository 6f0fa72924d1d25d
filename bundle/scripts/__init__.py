"""CoopSeg bundle code: cooperative training and latent space data augmentation (Chen et al., MICCAI 2021).

Subpackages follow the data flow (image -> preprocessing -> FTN -> latent masking -> decoders -> STN -> losses ->
trainer; inference is the same path without masking and losses):

* ``model``: the networks (FTN, STN) and latent-code masking;
* ``data``: the synthetic phantom, datalists, the slice dataset, augmentation and the ACDC / M&Ms / ACDC-C adapters;
* ``inference``: inputs -> network -> inferer -> outputs of the inference workflow, its quality scores and function
  report, and the deployment pipeline that validation reads from ``inference.json``;
* ``interactive``: correcting a mask from a user's scribbles or clicks, with the FTN+STN probabilities as the
  evidence and the STN as the shape prior (the MONAI Label app's interactive models);
* ``engine``: the cooperative loss terms of one iteration, the MONAI trainer and evaluator, handlers, schedules,
  resumable checkpoints and multi-process helpers;
* ``evaluation``: per-volume metrics, test-set evaluation and its reports.

Shared by all (the base): ``labels`` (label codes, names, colours from ``configs/metadata.json``), ``volumes``
(reading and checking volumes, accepted file types), ``weights`` (which weights file is served), ``files`` (atomic
writes), ``cpu_memory`` (glibc's allocator policy), ``figures`` (matplotlib backend, PNGs) and ``cardiac_function``
(volumes and function indices from label maps). ``export`` (ONNX) is a command on top.

Dependencies point one way, down :data:`LAYERS`: a module imports from its own layer or from lower ones, never from
a higher one, and the import graph has no cycle. Imports sit at the top of each module; only the packages of
:data:`DEFERRED_IMPORTS` are imported inside the functions that need them (the source repository's tests check all
three). Nothing is imported eagerly by this package: configs name what they use by ``_target_``.
"""

from pathlib import Path

__all__ = ["DEFERRED_IMPORTS", "LAYERS", "bundle_root"]

LAYERS: tuple[tuple[str, ...], ...] = (
    ("labels", "files", "cpu_memory", "weights", "volumes", "figures", "cardiac_function"),
    ("model",),
    ("data",),
    ("inference",),
    ("interactive", "engine"),
    ("evaluation",),
    ("export",),
)
"""Modules and subpackages of ``scripts`` from the lowest layer to the highest. Validation runs the deployment
pipeline, so ``engine`` sits above ``inference``; ``evaluation`` runs the engine's evaluator."""

DEFERRED_IMPORTS: tuple[str, ...] = ("highdicom", "matplotlib", "onnxruntime", "torchio")
"""Third-party packages imported inside the one function that uses them: each serves one feature (DICOM-SEG output,
figures, the ONNX check, the ACDC-C artefacts) and takes seconds to import, which runs without that feature skip."""


def bundle_root() -> str:
    """Absolute path of this bundle (the folder holding ``configs/``, ``scripts/`` and ``models/``).

    Configs use it as the default ``bundle_root``, so outputs land inside the bundle whatever the working directory.
    """
    return str(Path(__file__).resolve().parent.parent)
