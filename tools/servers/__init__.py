"""Local servers for tests and benchmarks, on 127.0.0.1 and a free port, stopped by their PID: the app's MONAI Label
server (``label``) and a real PACS, Orthanc with DICOMweb (``orthanc``)."""

from .label import APP_DIR, LabelServer, copy_app
from .orthanc import Orthanc
from .ports import free_port

__all__ = ["APP_DIR", "LabelServer", "Orthanc", "copy_app", "free_port"]
