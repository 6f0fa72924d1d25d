"""The field-of-view study's bookkeeping: what it reads from a training log and the report it rebuilds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tools import field_of_view

LOG = (
    "Epoch [1/2]: [88/89]  99%|, loss=1.3 [01:10<00:01]Epoch [1/2]: [89/89] 100%|, loss=1.2 [01:11<00:00]\n"
    "2026-12-07 04:29:23,418 - INFO - Epoch[1] Metrics -- val_dice_lv: 0.3565 val_mean_dice: 0.2284 \n"
    "2026-12-07 04:29:23,481 - INFO - Epoch[1] Metrics -- train_loss: 3.0962 train_seg: 0.6161 \n"
    "2026-12-07 04:35:26,510 - INFO - Epoch[2] Metrics -- val_dice_lv: 0.6913 val_mean_dice: 0.5950 \n"
)


def test_the_training_log_gives_iterations_and_the_validation_curve() -> None:
    assert field_of_view.iterations_per_epoch(LOG) == 89
    assert field_of_view.iterations_per_epoch("no progress bar") is None
    curve = field_of_view.validation_curve(LOG)
    assert curve == [
        {"epoch": 1, "val_dice_lv": 0.3565, "val_mean_dice": 0.2284},
        {"epoch": 2, "val_dice_lv": 0.6913, "val_mean_dice": 0.5950},
    ]  # training-loss lines are not validation


def test_the_report_lists_every_variant_and_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(field_of_view, "RESULTS", tmp_path)
    test = {o: {"dice_mean": 0.7, "hd95_mean": 12.0, "far_all": 0.031} for o in ("ftn", "ftn_stn", "ftn_stn_post")}
    record = {"variant": "whole_96", "what": "patches over the whole slice", "overrides": {"sampling": "whole_slice"},
              "machine": "test CPU", "train_cpu_s": 178.0, "iterations_per_epoch": 89,
              "validation": field_of_view.validation_curve(LOG), "test": test}  # fmt: skip
    (tmp_path / "cleanup_whole_96.json").write_text(json.dumps({
        "variant": "whole_96", "datalist": "phantom, 20 validation subjects", "validation_volumes": 40,
        "settings": {"none": {"dice_mean": 0.67, "hd95_mean": 20.2, "far_all": 0.043}},
    }))  # fmt: skip
    text = field_of_view.write_report([record]).read_text()
    assert "| whole_96 | patches over the whole slice |" in text
    assert "| 1.00 | 0.595 | ftn | 0.700 | 12.0 | 3.1 % |" in text  # 178 CPU s over 2 x 89 iterations; best Dice
    assert text.count("| ftn_stn_post |") == 1 and "test CPU" in text
    assert "| none | 0.6700 | 20.2 | 4.30 % |" in text
    assert (tmp_path / "learning_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "(learning_curves.png)" in text


def test_a_resumed_variant_is_costed_over_the_epochs_it_ran(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(field_of_view, "RESULTS", tmp_path)
    test = {o: {"dice_mean": 0.7, "hd95_mean": 12.0, "far_all": 0.031} for o in ("ftn", "ftn_stn", "ftn_stn_post")}
    record = {"variant": "whole_96_6ep", "what": "six epochs", "overrides": {}, "machine": "test CPU",
              "train_cpu_s": 89.0, "iterations_per_epoch": 89, "epochs": 6, "resumed_after_epoch": 5,
              "validation": [{"epoch": e, "val_mean_dice": 0.1 * e} for e in range(1, 7)], "test": test}  # fmt: skip
    text = field_of_view.write_report([record]).read_text()
    assert "| 1.00 | 0.600 | ftn |" in text  # 89 CPU s over the one epoch run after resuming
