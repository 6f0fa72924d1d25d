"""Handlers users rely on: checkpoint backups before a run, hard-example pictures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from monai.data import decollate_batch

from scripts.engine.handlers import CheckpointBackup, hard_example_grid
from scripts.labels import color_table


def test_checkpoint_backup_copies_and_keeps_originals(tmp_path: Path) -> None:
    (tmp_path / "model.pt").write_bytes(b"best")
    (tmp_path / "model_final.pt").write_bytes(b"final")
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    backup = CheckpointBackup(str(tmp_path), keep=2)
    first = backup()
    assert first is not None and (first / "model.pt").read_bytes() == b"best"
    assert not (first / "notes.txt").exists()
    assert (tmp_path / "model.pt").read_bytes() == b"best"  # still there for warm starts
    for _ in range(3):
        backup()
    assert len([p for p in (tmp_path / "backup").iterdir() if p.is_dir()]) == 2
    assert CheckpointBackup(str(tmp_path / "empty"))() is None


def test_hard_example_grid_layout() -> None:
    output = {
        "image": torch.zeros(3, 1, 8, 8),
        "hard_image": torch.ones(3, 1, 8, 8),
        "label": torch.full((3, 8, 8), 2),
        "pred": torch.zeros(3, 4, 8, 8),
        "hard_seg_logits": torch.zeros(3, 4, 8, 8),
    }
    output["pred"][:, 1] = 1.0
    grid = hard_example_grid(decollate_batch(output), max_rows=2)
    assert grid.shape == (16, 40, 3) and grid.dtype == np.uint8
    assert (grid[0, 8] == 255).all() and (grid[0, 0] == 0).all()
    assert (grid[0, 16] == color_table()[2]).all() and (grid[0, 24] == color_table()[1]).all()
