from .coopseg import CoopSegTrainTask

__all__ = ["CoopSegTrainTask"]
