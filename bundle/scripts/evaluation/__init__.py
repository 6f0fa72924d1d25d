"""Evaluation: per-volume metrics (``metrics``), test-set evaluation of a trained bundle (``test_sets``) and its
tables and plots (``report``)."""
