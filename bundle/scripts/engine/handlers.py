"""Ignite handlers for what users see and keep: a progress bar, pictures of hard examples, checkpoint backups."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.handlers import ProgressBar as IgniteProgressBar
from PIL import Image

from ..labels import color_table

__all__ = ["ProgressBar", "HardExampleImages", "CheckpointBackup"]

logger = logging.getLogger(__name__)


class ProgressBar:
    """tqdm bar over an epoch's iterations showing the running loss (ignite's ``ProgressBar``)."""

    def __init__(self, loss_key: str = "loss", persist: bool = False) -> None:
        self.loss_key = loss_key
        self.persist = persist

    def attach(self, engine: Engine) -> None:
        key = self.loss_key
        IgniteProgressBar(persist=self.persist).attach(
            engine, output_transform=lambda out: {key: float(out[0][key])} if isinstance(out, list) and out else {}
        )


def _colour_labels(label: np.ndarray) -> np.ndarray:
    colours = color_table()
    return colours[np.clip(label, 0, len(colours) - 1)]


def _grey(image: np.ndarray) -> np.ndarray:
    return (np.repeat(np.clip(image, 0.0, 1.0)[..., None], 3, axis=-1) * 255).astype(np.uint8)


def hard_example_grid(output: list[dict[str, Any]], max_rows: int = 4) -> np.ndarray:
    """RGB ``H', W', 3`` uint8 grid, one row per sample: image | hard image | label | FTN prediction | hard seg.

    ``output`` is the trainer's decollated output, one dict per sample (``image`` ``1, H, W``, ``label`` ``H, W``,
    ``pred`` and ``hard_seg_logits`` ``K, H, W``, ``hard_image`` ``1, H, W``).
    """
    rows = []
    for item in output[:max_rows]:
        panels = [
            _grey(item["image"][0].float().cpu().numpy()),
            _grey(item["hard_image"][0].float().cpu().numpy()),
            _colour_labels(item["label"].cpu().numpy()),
            _colour_labels(item["pred"].argmax(0).cpu().numpy()),
            _colour_labels(item["hard_seg_logits"].argmax(0).cpu().numpy()),
        ]
        rows.append(np.concatenate(panels, axis=1))
    return np.concatenate(rows, axis=0)


class HardExampleImages:
    """Every ``interval`` epochs, pictures of the last iteration's hard examples as a PNG and in TensorBoard.

    Columns: clean image, hard (latent-masked, decoded) image, label, FTN prediction, hard segmentation.
    Needs the cooperative trainer's output (``latent_da=True``); does nothing otherwise.
    """

    def __init__(self, output_dir: str, interval: int = 1, max_rows: int = 4, summary_writer: Any = None) -> None:
        self.output_dir = Path(output_dir)
        self.interval = max(1, int(interval))
        self.max_rows = max_rows
        self.writer = summary_writer

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)

    def __call__(self, engine: Engine) -> None:
        output = engine.state.output
        if not isinstance(output, list) or not output or "hard_image" not in output[0]:
            return
        grid = hard_example_grid(output, self.max_rows)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        path = self.output_dir / f"hard_examples_epoch{engine.state.epoch:04d}.png"
        Image.fromarray(grid).save(path)
        if self.writer is not None:
            self.writer.add_image("hard_examples", torch.from_numpy(grid).permute(2, 0, 1), engine.state.epoch)
            self.writer.flush()


class CheckpointBackup:
    """At the start of a run, copy existing ``*.pt``/``*.ts`` files of ``ckpt_dir`` to ``ckpt_dir/backup/<time>/``.

    Training overwrites ``model.pt`` when the validation score improves; this keeps the previous run's weights
    (the newest ``keep`` backups are retained). MONAI's ``CheckpointSaver`` replaces files without keeping the old.
    """

    def __init__(self, ckpt_dir: str, keep: int = 5) -> None:
        self.ckpt_dir = Path(ckpt_dir)
        self.keep = keep

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine | None = None) -> Path | None:
        files = sorted(
            p
            for p in self.ckpt_dir.glob("*")
            if p.suffix in (".pt", ".ts") and p.is_file() and not p.name.startswith(".")  # not a file being written
        )
        if not files:
            return None
        target = self.ckpt_dir / "backup" / time.strftime("%Y%m%d-%H%M%S")
        suffix = 1
        while target.exists():
            target = target.with_name(f"{target.name.split('.')[0]}.{suffix}")
            suffix += 1
        target.mkdir(parents=True)
        for f in files:
            shutil.copy2(f, target / f.name)
        logger.info("backed up %d existing checkpoint file(s) to %s", len(files), target)
        backups = sorted((p for p in target.parent.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
        for old in backups[: max(0, len(backups) - self.keep)]:
            shutil.rmtree(old, ignore_errors=True)
        return target
