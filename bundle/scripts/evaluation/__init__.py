"""Evaluation: per-volume metrics (``metrics``), test-set evaluation of a trained bundle (``evaluate``, wired by
``configs/evaluate.json``), the function agreement with reference labels (``agreement``), the quality flag's
calibration (``quality_flag``) and the tables and plots (``report``)."""
