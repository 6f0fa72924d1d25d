from .disagreement import Disagreement

__all__ = ["Disagreement"]
