"""The app's working bundle: the bundle's own configs and code, with weights the app may retrain.

MONAI Label's bundle tasks read ``<bundle>/configs``, import ``<bundle>/scripts`` and read and write
``<bundle>/models``. The app never writes into the source bundle (a git checkout or a downloaded model): it serves
``<model_dir>/coopseg/``: ``scripts`` is a symbolic link to the source bundle's, ``configs/`` holds a link to each of
the source bundle's config files (one source of truth; files MONAI Label generates, such as the multi-GPU
``monailabel_train.json``, stay in the workspace), and ``models/`` is the app's own. The source bundle's weights
(``models/model.pt``, else ``models/model.ts``) are copied in when the workspace is created and whenever they change
(the replaced live weights are kept under ``models/backup/``); fine-tuning then writes the new ``models/model.pt``
there. Weights the app never retrains (the interactive models' learned correction, ``models/correction_net.pt``) are
links to the source bundle's.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

from filelock import FileLock

from .bundle_code import bundle_module

logger = logging.getLogger(__name__)

LINKED_MODELS = ("correction_net.pt",)  # the learned correction of the interactive models


def resolve_source_bundle(conf: dict[str, str], app_dir: str) -> Path:
    """``--conf bundle_path``, else ``$COOPSEG_BUNDLE``, else the repository's ``bundle/`` next to ``apps/``."""
    path = (
        conf.get("bundle_path") or os.environ.get("COOPSEG_BUNDLE") or Path(app_dir).resolve().parent.parent / "bundle"
    )
    path = Path(path).expanduser().resolve()
    if not (path / "configs" / "inference.json").is_file() or not (path / "scripts").is_dir():
        raise FileNotFoundError(
            f"{path} is not the CoopSeg bundle (no configs/inference.json or scripts/); pass --conf bundle_path "
            "<path to the bundle folder> or set COOPSEG_BUNDLE."
        )
    return path


def resolve_model_dir(conf: dict[str, str], app_dir: str) -> Path:
    """``--conf model_dir``, else ``$COOPSEG_MODEL_DIR``, else ``<app_dir>/model`` (git-ignored)."""
    path = conf.get("model_dir") or os.environ.get("COOPSEG_MODEL_DIR") or Path(app_dir) / "model"
    return Path(path).expanduser().resolve()


def _link(link: Path, target: Path) -> None:
    """Make ``link`` a symbolic link to ``target``; a real file or folder in its place is an error."""
    if link.is_symlink() and Path(os.readlink(link)) == target:
        return
    if link.is_symlink():
        link.unlink()
    elif link.exists():
        raise FileExistsError(f"{link} exists and is not a link to {target}; remove it.")
    link.symlink_to(target, target_is_directory=target.is_dir())


def _signature(path: Path) -> dict:
    st = path.stat()
    return {"file": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


class Workspace:
    """``<model_dir>/coopseg``: links to the source bundle's configs and scripts, and the app's own ``models/``."""

    def __init__(self, source: Path, model_dir: Path, name: str = "coopseg") -> None:
        self.source = Path(source)
        self.path = Path(model_dir) / name
        self.models = self.path / "models"
        self._seed_record = self.models / "seeded_from.json"
        self._weights = bundle_module(self.source, "weights")
        self._files = bundle_module(self.source, "files")

    def prepare(self) -> Workspace:
        """Create the links and the models folder; copy the source weights in if they are new or changed."""
        self.models.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.path / ".lock")):
            _link(self.path / "scripts", self.source / "scripts")
            configs = self.path / "configs"
            configs.mkdir(exist_ok=True)
            for stale in configs.iterdir():  # links to config files the source no longer has
                if stale.is_symlink() and not stale.exists():
                    stale.unlink()
            for target in sorted((self.source / "configs").iterdir()):
                if target.is_file():
                    _link(configs / target.name, target)
            for name in LINKED_MODELS:  # weights the app never retrains: read from the source bundle
                link, target = self.models / name, self.source / "models" / name
                if target.is_file():
                    _link(link, target)
                elif link.is_symlink():
                    link.unlink()
            self._seed()
        return self

    def source_weights(self) -> Path | None:
        """The source bundle's weights, as the bundle resolves them (``model.pt``, else ``model.ts``)."""
        return self._weights.find_weights(self.source / "models")

    def weights(self) -> Path | None:
        """The live weights of the workspace (``models/model.pt``, else ``models/model.ts``), or None."""
        return self._weights.find_weights(self.models)

    def _seed(self) -> None:
        source = self.source_weights()
        if source is None:
            return
        signature = _signature(source)
        recorded = json.loads(self._seed_record.read_text()) if self._seed_record.is_file() else None
        if recorded == signature and self.weights() is not None:
            return
        live = [self.models / n for n in self._weights.WEIGHT_FILES if (self.models / n).is_file()]
        if live:
            backup = self.models / "backup" / time.strftime("%Y%m%d-%H%M%S")
            backup.mkdir(parents=True, exist_ok=True)
            for f in live:
                shutil.move(str(f), backup / f.name)
            logger.warning("bundle weights changed: previous live weights moved to %s", backup)
        self._files.copy_file_atomic(source, self.models / source.name, overwrite=True)
        self._files.write_json_atomic(self._seed_record, signature)
        logger.info("serving weights copied from %s", source)

    def status(self) -> dict:
        """For ``/info/``: whether trained weights exist, which file is live, and what to do if none."""
        live = self.weights()
        if live is None:
            return {
                "available": False,
                "file": None,
                "source_bundle": str(self.source),
                "message": (
                    "NO TRAINED WEIGHTS YET: neither models/model.pt nor models/model.ts exists in the bundle "
                    f"{self.source}. Run the training command (python -m monai.bundle run training --config_file "
                    "bundle/configs/train.json) or download the pretrained bundle, then restart the server; or "
                    "submit labels and train the 'coopseg' trainer from scratch. Inference is unavailable until then."
                ),
            }
        fine_tuned = live.name == "model.pt" and (self.models / "model_final.pt").is_file()
        return {
            "available": True,
            "file": str(live),
            "source_bundle": str(self.source),
            "message": ("fine-tuned on submitted labels" if fine_tuned else "weights of the bundle")
            + f" ({live.name}, modified {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(live.stat().st_mtime))})",
        }
