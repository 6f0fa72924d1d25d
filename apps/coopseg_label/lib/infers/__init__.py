from .coopseg import CoopSegInferTask

__all__ = ["CoopSegInferTask"]
