"""The PACS as the app's datastore: MONAI Label's ``DICOMWebDatastore`` with the bundle's DICOM reading and writing.

What changes from MONAI Label's own DICOMweb datastore:

* series are converted by the bundle (:mod:`lib.pacs.series`): a cine becomes a 4D NIfTI in slice and phase order,
  not whatever ITK's series reader makes of interleaved phases; an unusable series is an HTTP 422 naming it;
* a final label (Slicer's *Submit Label*, ``PUT /datastore/label``) is written as DICOM-SEG by the bundle and stored
  in the PACS by STOW-RS through the datastore's client; a label that does not fit its series is an HTTP 422 and
  nothing is sent;
* the worklist (``GET /datastore/``) lists every series the search filter finds, cached or not, with its QIDO
  attributes; lists are re-read after at most ``list_ttl_s`` seconds and after every stored label, and a SEG series'
  reference is looked up once;
* images cannot be uploaded through the server (they belong in the PACS);
* a series is retrieved only when it is used (an inference, a label, or a scoring pass within its retrieval limit,
  :mod:`lib.scoring.disagreement`); :meth:`PacsDatastore.is_retrieved` says whether that is already done.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import requests
from filelock import FileLock
from monailabel.datastore.dicom import DICOMwebClientX, DICOMWebDatastore
from monailabel.datastore.local import LocalDatastore
from monailabel.datastore.utils.convert import binary_to_image
from monailabel.datastore.utils.dicom import dicom_web_download_series
from monailabel.interfaces.datastore import DefaultLabelTag
from pydicom.dataset import Dataset

from ..bundle_code import bundle_module
from ..errors import http_error, sentence
from .connection import PacsSettings
from .series import label_to_dicom_seg, series_to_nifti

logger = logging.getLogger(__name__)

QIDO_FIELDS = ("SeriesDescription", "SeriesNumber", "NumberOfSeriesRelatedInstances", "PatientID", "StudyDate")


def _value(item: dict[str, Any], keyword: str) -> Any:
    """A QIDO-RS JSON attribute's first value (``None`` when absent)."""
    element = item.get(f"{pydicom.datadict.tag_for_keyword(keyword):08X}") or {}
    values = element.get("Value") or [None]
    value = values[0]
    return value.get("Alphabetic") if isinstance(value, dict) else value


def _count(folder: Path) -> int:
    return sum(1 for f in folder.iterdir() if f.is_file())


class _Timed:
    """A value recomputed when older than ``ttl`` seconds or after :meth:`clear`."""

    def __init__(self, compute: Callable[[], Any], ttl: float) -> None:
        self.compute, self.ttl = compute, ttl
        self._lock = threading.Lock()
        self._value: Any = None
        self._at = -float("inf")

    def get(self) -> Any:
        with self._lock:
            if time.monotonic() - self._at > self.ttl:
                self._value, self._at = self.compute(), time.monotonic()
            return self._value

    def clear(self) -> None:
        with self._lock:
            self._at = -float("inf")


class PacsDatastore(DICOMWebDatastore):
    """MONAI Label's DICOMweb datastore over a PACS of short-axis MR series (see the module docstring).

    Args:
        client: a connected DICOMweb client (:func:`lib.pacs.connection.connect`).
        pacs: the connection's settings (URL, search filter, cache folder).
        bundle: the served bundle, whose code reads series and writes DICOM-SEG.
        list_ttl_s: how long a series list from the PACS is reused.
    """

    def __init__(self, client: DICOMwebClientX, pacs: PacsSettings, bundle: Path, list_ttl_s: float = 30.0) -> None:
        self.pacs = pacs
        self.bundle = Path(bundle)
        self._series_list = _Timed(self._search_series, list_ttl_s)
        self._seg_list = _Timed(self._search_segs, list_ttl_s)
        self._references: dict[str, str] = {}  # SEG series -> the series it segments
        super().__init__(client, pacs.search_filter, cache_path=pacs.cache_path, convert_to_nifti=True)

    # the worklist ------------------------------------------------------------------------------------------------
    def _search_series(self) -> list[dict[str, Any]]:
        found = self._client.search_for_series(
            search_filters=self.pacs.search_filter, fields=list(QIDO_FIELDS), get_remaining=True
        )
        return [s for s in found if _value(s, "Modality") != "SEG"]  # a filter without Modality lists SEGs too

    def _search_segs(self) -> list[dict[str, Any]]:
        return self._client.search_for_series(search_filters={"Modality": "SEG"}, get_remaining=True)

    def list_images(self) -> list[str]:
        return [str(_value(s, "SeriesInstanceUID")) for s in self._series_list.get()]

    def _reference(self, seg: dict[str, Any]) -> str | None:
        uid = str(_value(seg, "SeriesInstanceUID"))
        if uid not in self._references:
            meta = self._client.retrieve_series_metadata(str(_value(seg, "StudyInstanceUID")), uid)
            refs = Dataset.from_json(meta[0]).get("ReferencedSeriesSequence") if meta else None
            self._references[uid] = str(refs[0].SeriesInstanceUID) if refs else ""
        return self._references[uid] or None

    def get_labeled_images(self, label_tag: str | None = None, labels: list[str] | None = None) -> list[str]:
        """Series of the worklist that a DICOM-SEG in the PACS references."""
        listed = set(self.list_images())
        return sorted({ref for seg in self._seg_list.get() if (ref := self._reference(seg)) in listed})

    def json(self) -> dict[str, Any]:
        """Every series of the worklist with its QIDO attributes, merged with what the cache knows of it."""
        local = super().json()
        labeled = set(self.get_labeled_images())
        objects = {}
        for series in self._series_list.get():
            uid = str(_value(series, "SeriesInstanceUID"))
            cached = local["objects"].get(uid) or {"image": {"ext": "", "info": {}}, "labels": {}}
            info = {k: _value(series, k) for k in ("StudyInstanceUID", "Modality", *QIDO_FIELDS)}
            cached["image"]["info"] = {**info, **cached["image"]["info"], "labeled_in_pacs": uid in labeled}
            objects[uid] = cached
        return {**local, "name": self.pacs.url, "description": "DICOMweb worklist", "objects": objects}

    # images ----------------------------------------------------------------------------------------------------
    def _series_dir(self, image_id: str) -> Path:
        return Path(self._datastore.image_path()) / image_id

    def _study_of(self, image_id: str) -> str:
        found = self._client.search_for_series(search_filters={"SeriesInstanceUID": image_id})
        if not found:
            raise http_error(
                404,
                sentence(f"no series {image_id} in the PACS {self.pacs.url}", fix="GET /datastore/ lists the worklist"),
            )
        return str(_value(found[0], "StudyInstanceUID"))

    def _download(self, image_id: str) -> Path:
        """The series' instances in the cache (``<cache>/<series uid>/``), retrieved (WADO-RS) if not there yet or if
        the PACS now holds another number of instances."""
        target = self._series_dir(image_id)
        if target.is_dir() and any(target.iterdir()) and self._instances_in_pacs(image_id) in (None, _count(target)):
            return target
        study = self._study_of(image_id)
        with bundle_module(self.bundle, "files").staged_dir(target) as partial:  # renamed into place when complete
            dicom_web_download_series(study, image_id, str(partial), self._client)
            shutil.rmtree(target, ignore_errors=True)  # an outdated copy
        return target

    def is_retrieved(self, image_id: str) -> bool:
        """Whether the series is in the cache (converted, or its instances retrieved): using it costs the PACS
        nothing."""
        nifti = Path(self._datastore.image_path()) / f"{image_id}.nii.gz"
        folder = self._series_dir(image_id)
        return nifti.is_file() or (folder.is_dir() and any(folder.iterdir()))

    def _instances_in_pacs(self, image_id: str) -> int | None:
        """The series' number of instances in the worklist search (None: not listed or not said)."""
        for series in self._series_list.get():
            if str(_value(series, "SeriesInstanceUID")) == image_id:
                count = _value(series, "NumberOfSeriesRelatedInstances")
                return int(count) if count is not None else None
        return None

    def image_version(self, image_id: str) -> str:
        """What changes when the series changes in the PACS: its number of instances (from the worklist search)."""
        return f"instances={self._instances_in_pacs(image_id)}"

    def get_image_uri(self, image_id: str) -> str:
        """The NIfTI of a series (4D for a cine), retrieved and converted by the bundle on first use."""
        nifti = Path(self._datastore.image_path()) / f"{image_id}.nii.gz"
        if nifti.is_file() and image_id in self._datastore.objects:
            return str(nifti.resolve())
        with FileLock(str(Path(self._datastore.image_path()) / f".{image_id}.lock")):
            if not nifti.is_file():
                series_dir = self._download(image_id)
                with tempfile.TemporaryDirectory() as tmp:
                    converted = Path(tmp) / f"{image_id}.nii.gz"
                    info = series_to_nifti(self.bundle, series_dir, image_id, converted)
                    LocalDatastore.add_image(self, image_id, str(converted), info)
            elif image_id not in self._datastore.objects:
                self.refresh()
        return str(nifti.resolve())

    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        raise http_error(
            405,
            sentence(
                f"uploads are refused: the datastore is the PACS {self.pacs.url}",
                fix="send images to the PACS (DICOM C-STORE or STOW-RS)",
            ),
        )

    # labels ----------------------------------------------------------------------------------------------------
    def get_label_uri(self, label_id: str, label_tag: str, image_id: str = "") -> str:
        if self._datastore.label(label_id, label_tag):  # a label saved through this server
            return LocalDatastore.get_label_uri(self, label_id, label_tag)
        return super().get_label_uri(label_id, label_tag, image_id)

    def _store(self, files: list[Path], image_id: str) -> str:
        """STOW-RS ``files`` into the PACS; the SEG series' UID. Refusals are HTTP 502 naming the series."""
        datasets = [pydicom.dcmread(str(f)) for f in files]
        try:
            response = self._client.store_instances(datasets)
        except requests.exceptions.RequestException as e:
            status = getattr(getattr(e, "response", None), "status_code", None)
            cause = f"HTTP {status}" if status else type(e).__name__
            raise http_error(
                502,
                sentence(f"the PACS {self.pacs.url} did not store the DICOM-SEG of series {image_id} ({cause})"),
                str(e),
            ) from e
        failed = response.get("FailedSOPSequence") if response is not None else None
        if failed:
            raise http_error(
                502,
                sentence(
                    f"the PACS {self.pacs.url} refused {len(failed)} of {len(datasets)} DICOM-SEG instance(s) of "
                    f"series {image_id}"
                ),
            )
        return str(datasets[0].SeriesInstanceUID)

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        """A final label goes to the PACS as DICOM-SEG (and into the cache); other tags stay in the cache."""
        image_uri = self.get_image_uri(image_id)
        if label_filename.endswith(".bin"):  # OHIF's raw label buffer
            label_filename = binary_to_image(image_uri, label_filename)
        label_info = dict(label_info or {})
        if label_tag == DefaultLabelTag.FINAL:
            with tempfile.TemporaryDirectory() as tmp:
                files = label_to_dicom_seg(self.bundle, label_filename, self._download(image_id), image_id, Path(tmp))
                seg_uid = self._store(files, image_id)
            image_info = self.get_image_info(image_id)
            label_info.update(
                SeriesInstanceUID=seg_uid,
                StudyInstanceUID=image_info.get("StudyInstanceUID"),
                PatientID=image_info.get("PatientID"),
                Modality="SEG",
                instances=len(files),
            )
            self._seg_list.clear()
            logger.info("label of series %s stored in %s as DICOM-SEG series %s", image_id, self.pacs.url, seg_uid)
        return LocalDatastore.save_label(self, image_id, label_filename, label_tag, label_info)
