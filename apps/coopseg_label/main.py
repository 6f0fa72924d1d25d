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
the ``disagreement`` strategy keeps an image it handed out from being handed out again; default 60).

Everything runs through the bundle: ``configs/inference.json`` for inference (``lib/infers``),
``configs/train.json`` and ``scripts.engine.trainer.CooperativeTrainer`` for training (``lib/trainers``),
``scripts.volumes`` for checking uploads (``lib/datastore``), ``scripts.weights`` for the live weights.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

from lib.activelearning import Disagreement
from lib.bundle_code import bundle_module
from lib.datastore import CoopSegDatastore, check_image_file
from lib.errors import http_error
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
INTERACTIVE = ("coopseg_scribbles", "coopseg_clicks")  # corrections of a mask (lib/infers/interactive.py)


def _flag(conf: dict[str, str], key: str) -> bool:
    return str(conf.get(key, "false")).lower() in ("true", "1", "yes")


class CoopSegApp(MONAILabelApp):
    """Infer models ``coopseg`` (FTN + STN, default) and ``coopseg_fast`` (FTN), interactive models
    ``coopseg_scribbles`` and ``coopseg_clicks`` (corrections of a mask), trainer ``coopseg``, active learning
    ``disagreement``, ``random`` and ``first``, over a datastore that validates uploads."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        check_bind_host(sys.argv, settings.MONAI_LABEL_AUTH_ENABLE)
        self.workspace = Workspace(resolve_source_bundle(conf, app_dir), resolve_model_dir(conf, app_dir)).prepare()
        # before MONAI Label's worker threads allocate, so inference in them reuses freed memory
        bundle_module(self.workspace.source, "cpu_memory").single_malloc_arena()
        metadata = json.loads((self.workspace.source / "configs" / "metadata.json").read_text())
        channels = metadata["network_data_format"]["outputs"]["pred"]["channel_def"]
        self.num_classes = len(channels)
        labels = [name for code, name in sorted(channels.items(), key=lambda kv: int(kv[0])) if int(code) > 0]
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="CoopSeg",
            description="LV blood pool, LV myocardium and RV blood pool in cardiac short-axis cine MR (FTN + STN, "
            "cooperative training). Research use only.",
            version=metadata.get("version", ""),
            labels=labels,
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
        tasks: dict[str, InferTask] = {
            name: CoopSegInferTask(str(self.workspace.path), self.conf, refine=r) for name, r in MODELS.items()
        }
        tasks.update(interactive_tasks(str(self.workspace.path), self.conf, lambda: self._datastore))
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
        return {"disagreement": DisagreementScoring(lambda: self._infer_tasks().get("coopseg"))}

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
            raise http_error(404, f"unknown model '{model}'; available: {', '.join([*MODELS, *INTERACTIVE])}.")
        if model not in tasks:
            raise http_error(503, self.workspace.status()["message"])
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
                raise http_error(404, f"image '{image}' is not in the datastore (GET /datastore/?output=all lists it).")
        try:
            return super().infer(request, datastore)
        except Exception as e:
            if hasattr(e, "status_code"):
                raise
            raise http_error(500, f"inference of {model} on {image!r} failed: {type(e).__name__}: {e}") from e
