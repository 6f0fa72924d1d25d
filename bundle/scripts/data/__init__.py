"""Data: the synthetic phantom generator, datalist resolution and the 2D slice dataset."""

from . import datalist, phantom, slices

__all__ = ["datalist", "phantom", "slices"]
