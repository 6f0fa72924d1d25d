from .disagreement import SCORE_KEY, DisagreementScoring, weights_signature

__all__ = ["SCORE_KEY", "DisagreementScoring", "weights_signature"]
