"""CoopSeg MONAI Label app: STN-refined LV, myocardium and RV masks for 3D Slicer, retrained on submitted labels.

Start (offline; binds 127.0.0.1 unless told otherwise):

    python -m monailabel.main start_server --app apps/coopseg_label --studies <dir> -i 127.0.0.1 -p 8000

``--studies`` is a folder of NIfTI/NRRD volumes (3D stacks or 4D cines), or the DICOMweb root of a PACS
(``http://<host>:8042/dicom-web`` for Orthanc): the worklist is then the PACS' MR series, and submitted labels are
stored back in it as DICOM-SEG (``lib/pacs``; credentials and filter: MONAI Label's ``MONAI_LABEL_DATASTORE_USERNAME``,
``MONAI_LABEL_DATASTORE_PASSWORD`` and ``MONAI_LABEL_DICOMWEB_SEARCH_FILTER``, default ``{"Modality": "MR"}``). A URL
that does not answer, or refuses the credentials, stops the server with a message naming it.

Options (``--conf key value``): ``bundle_path`` (default ``$COOPSEG_BUNDLE`` or the repository's ``bundle/``),
``model_dir`` (where the app keeps its working bundle and retrained weights; default ``$COOPSEG_MODEL_DIR`` or
``<app>/model``, git-ignored), ``preload`` (``true`` loads the networks at start), ``skip_trainers``,
``skip_strategies`` and ``skip_scoring`` (``true`` for an inference-only deployment), ``lease_minutes`` (how long
the ``disagreement`` strategy keeps an image it handed out from being handed out again; default 60),
``scoring_retrievals`` (how many series not yet retrieved from a PACS one background scoring pass may retrieve;
default 2), ``scoring_retrieve_at_start`` (``true`` lets the pass at start retrieve too; by default it scores only
the series already in the cache) and ``retain_cpu_memory`` (``false`` leaves glibc's malloc as it is: no single
arena for the worker threads, no kept freed memory in inference; ``scripts.cpu_memory``).

Everything runs through the bundle: ``configs/inference.json`` for inference (``lib/infers``),
``configs/train.json`` and ``scripts.engine.trainer.CooperativeTrainer`` for training (``lib/trainers``),
``scripts.volumes`` for checking uploads (``lib/datastore``), ``scripts.weights`` for the live weights.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from typing import Any

from lib.activelearning import Disagreement
from lib.bundle_code import bundle_module
from lib.datastore import CoopSegDatastore, check_image_file
from lib.errors import http_error, sentence, without_paths
from lib.infers import CoopSegInferTask
from lib.infers.interactive import interactive_tasks
from lib.pacs import PacsConnectionError, PacsDatastore, is_url, open_pacs
from lib.scoring import DisagreementScoring
from lib.security import check_bind_host
from lib.trainers import CoopSegTrainTask
from lib.workspace import Workspace, resolve_model_dir, resolve_source_bundle
from monailabel.config import settings
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random

logger = logging.getLogger(__name__)

MODELS = {"coopseg": True, "coopseg_fast": False}  # name -> STN refinement
DEFAULT_SCORING_RETRIEVALS = 2  # series a background scoring pass may retrieve from a PACS
NO_WEIGHTS = (
    "NO TRAINED WEIGHTS YET: no models/model.pt or models/model.ts in the served bundle; run the training command or "
    "download the pretrained bundle (GET /info/)."
)
INTERACTIVE = ("coopseg_scribbles", "coopseg_clicks")  # corrections of a mask (lib/infers/interactive.py)


def _flag(conf: dict[str, str], key: str, default: str = "false") -> bool:
    return str(conf.get(key, default)).lower() in ("true", "1", "yes")


class CoopSegApp(MONAILabelApp):
    """Infer models ``coopseg`` (FTN + STN, default) and ``coopseg_fast`` (FTN), interactive models
    ``coopseg_scribbles`` and ``coopseg_clicks`` (corrections of a mask), trainer ``coopseg``, active learning
    ``disagreement``, ``random`` and ``first``, over a datastore that validates uploads."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        check_bind_host(sys.argv, settings.MONAI_LABEL_AUTH_ENABLE)
        self.workspace = Workspace(resolve_source_bundle(conf, app_dir), resolve_model_dir(conf, app_dir)).prepare()
        self.retain_cpu_memory = _flag(conf, "retain_cpu_memory", "true")
        if self.retain_cpu_memory:  # before MONAI Label's worker threads allocate, so they reuse freed memory
            bundle_module(self.workspace.source, "cpu_memory").single_malloc_arena()
        metadata = json.loads((self.workspace.source / "configs" / "metadata.json").read_text())
        labels = bundle_module(self.workspace.source, "labels")
        self.num_classes = labels.NUM_CLASSES
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="CoopSeg",
            description="LV blood pool, LV myocardium and RV blood pool in cardiac short-axis cine MR (FTN + STN, "
            "cooperative training). Research use only.",
            version=metadata.get("version", ""),
            labels=[label.name for label in labels.LABELS],
        )

    # tasks -----------------------------------------------------------------------------------------------------
    def init_datastore(self) -> Datastore:
        if is_url(self.studies):
            self.studies = self.studies.strip().rstrip("/")
            if settings.MONAI_LABEL_DATASTORE.lower() in ("xnat", "dsa"):  # MONAI Label's other remote datastores
                return super().init_remote_datastore()
            try:
                return open_pacs(self.studies, self.workspace.path)
            except PacsConnectionError as e:
                logger.error("CANNOT START: %s", e)
                raise
        return CoopSegDatastore(
            self.studies,
            bundle=self.workspace.path,
            num_classes=self.num_classes,
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
        )

    def init_infers(self) -> dict[str, InferTask]:
        if self.workspace.weights() is None:
            logger.warning(self.workspace.status()["message"])
            return {}
        path, retain = str(self.workspace.path), self.retain_cpu_memory
        tasks: dict[str, InferTask] = {
            name: CoopSegInferTask(path, self.conf, refine, retain) for name, refine in MODELS.items()
        }
        tasks.update(interactive_tasks(path, self.conf, lambda: self._datastore))
        return tasks

    def init_trainers(self) -> dict[str, TrainTask]:
        if _flag(self.conf, "skip_trainers"):
            return {}
        return {"coopseg": CoopSegTrainTask(str(self.workspace.path), self.conf)}

    def init_strategies(self) -> dict[str, Strategy]:
        if _flag(self.conf, "skip_strategies"):
            return {}
        lease = 60.0 * float(self.conf.get("lease_minutes", 60))
        return {"disagreement": Disagreement(lease_seconds=lease), "random": Random(), "first": First()}

    def init_scoring_methods(self) -> dict[str, ScoringMethod]:
        if _flag(self.conf, "skip_scoring") or _flag(self.conf, "skip_strategies"):
            return {}
        retrievals = int(self.conf.get("scoring_retrievals", DEFAULT_SCORING_RETRIEVALS))
        studies = hashlib.sha256(str(self.studies).encode()).hexdigest()[:16]
        memory = self.workspace.path.parent / "scoring" / f"failed_{studies}.json"  # one per datastore
        return {"disagreement": DisagreementScoring(lambda: self._infer_tasks().get("coopseg"), retrievals, memory)}

    def on_init_complete(self) -> None:
        """MONAI Label's start-up (including a background scoring pass), which retrieves nothing from a PACS unless
        ``--conf scoring_retrieve_at_start true``: it scores the series already in the cache."""
        self._starting = True
        try:
            super().on_init_complete()
        finally:
            self._starting = False

    def async_scoring(self, method: str | None, params: dict[str, Any] | None = None) -> Any:
        if getattr(self, "_starting", False) and not _flag(self.conf, "scoring_retrieve_at_start"):
            methods = [method] if method else list(self._scoring_methods)
            params = {m: {**((params or {}).get(m) or {}), "retrievals": 0} for m in methods}
        return super().async_scoring(method, params)

    def _infer_tasks(self) -> dict[str, InferTask]:
        """The infer tasks, created once weights exist (e.g. after training from scratch) without a restart."""
        if not self._infers and self.workspace.weights() is not None:
            self._infers = self.init_infers()
        return self._infers

    # REST-facing behaviour -------------------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        self._infer_tasks()
        meta = super().info()
        meta["weights"] = self.workspace.status()
        if not meta["weights"]["available"]:
            meta["description"] = meta["weights"]["message"] + " " + meta["description"]
        return meta

    def infer(self, request: dict[str, Any], datastore: Datastore | None = None) -> dict[str, Any]:
        model = request.get("model")
        tasks = self._infer_tasks()
        if model not in MODELS and model not in INTERACTIVE:
            raise http_error(
                404, sentence(f"unknown model '{model}'", fix=f"available: {', '.join([*MODELS, *INTERACTIVE])}")
            )
        if model not in tasks:
            raise http_error(503, NO_WEIGHTS, self.workspace.status()["message"])
        image = request.get("image")
        if isinstance(image, str):
            datastore = datastore or self.datastore()
            request = {**request, "image_id": request.get("image_id") or image}
            if os.path.exists(image):  # an uploaded file (POST /infer with file=...)
                request["image_id"] = "uploaded image"
                check_image_file(self.workspace.path, image, "uploaded image")
            elif isinstance(datastore, PacsDatastore):
                datastore.get_image_uri(image)  # retrieved and checked by the bundle's DICOM reader; 404 or 422
            elif image in datastore.list_images():
                check_image_file(self.workspace.path, datastore.get_image_uri(image), f"image '{image}'")
            else:
                raise http_error(
                    404, sentence(f"no image '{image}' in the datastore", fix="GET /datastore/?output=all lists them")
                )
        try:
            return super().infer(request, datastore)
        except Exception as e:
            if hasattr(e, "status_code"):
                raise
            name = request.get("image_id") or "the image"
            cause = without_paths(" ".join(str(e).split()))[:100]
            raise http_error(
                500, sentence(f"{type(e).__name__} in {model} ({cause})", f"on {name}"), f"{image}: {e}"
            ) from e
