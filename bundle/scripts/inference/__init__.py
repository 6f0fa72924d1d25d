"""The inference workflow, in the order data flows: ``inputs`` (volumes to segment) -> ``network`` (weights) ->
``fusion`` (inference-only fused blocks) -> ``inferer`` (slice by slice, frame by frame) -> ``predictor`` (the
engine and its summary) -> ``outputs`` (labels written to disk)."""
