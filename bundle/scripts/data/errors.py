"""The error of the data layer: a dataset, datalist or dataset file that cannot be used."""

__all__ = ["DatasetError"]


class DatasetError(ValueError):
    """The configured dataset cannot be used; the message names the file or directory and what was expected."""
