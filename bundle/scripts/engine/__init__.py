"""Training and validation: the loss terms (``losses``) of one cooperative iteration (``cooperative``), the MONAI
trainer and evaluator (``trainer``), ignite handlers (``handlers``), learning-rate schedules (``schedules``), resumable
training state (``checkpoints``) and multi-process helpers (``distributed``)."""
