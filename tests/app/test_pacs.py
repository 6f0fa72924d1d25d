"""The app with a real PACS: Orthanc (DICOMweb) holding generated short-axis series, phases interleaved.

In-process: the connection check (unreachable URL, 401, wrong root, right credentials), the worklist filter and the
DICOMweb datastore (series listed, converted by the bundle's reader into 3D or 4D NIfTI on the series grid, unusable
series and unfitting labels refused). On a real server, as 3D Slicer drives it through MONAI Label's client: list,
infer on a cine (4D label on the series grid, function indices and quality score), submit labels that land in Orthanc
as DICOM-SEG on the source instances; and a server given an unreachable URL or a wrong password stops, naming both.

The served network is :class:`oracle.IntensityBandNet`, so the right masks are known (see :mod:`oracle`).
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import oracle
import pydicom
import pytest
from refusals import check_refusal, detail_of

from conftest import BUNDLE_ROOT
from helpers import configured_quality_threshold, make_bundle_copy, write_cine_series, write_nifti
from scripts.cardiac_function import function_from_cine, measure_volumes
from scripts.inference.dicom import read_series_grid
from tools.servers import APP_DIR, LabelServer, Orthanc, copy_app, free_port

USER, PASSWORD = "coopseg", "s3cret-pw"
LABELS = ("lv", "myocardium", "rv")


# data and servers --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """DICOM folders: a coded cine (4 phases, interleaved files), one of its phases as a stack, a CT series and a
    2-slice MR series; with the cine's label and the folders' series UIDs."""
    root = tmp_path_factory.mktemp("dicom")
    image, label, affine = oracle.coded_cine()
    folders = {
        "cine": write_cine_series(root / "cine", image, affine, seed=3, SeriesDescription="SAX cine"),
        "stack": write_cine_series(root / "stack", image[..., 0], affine, seed=4, SeriesDescription="SAX ED"),
        "ct": write_cine_series(root / "ct", image[..., 0], affine, Modality="CT", SeriesDescription="CT"),
        "two_slices": write_cine_series(root / "two", image[:, :, :2, 0], affine, SeriesDescription="two slices"),
    }
    uids = {name: str(pydicom.dcmread(next(f.iterdir())).SeriesInstanceUID) for name, f in folders.items()}
    return {"folders": folders, "uids": uids, "image": image, "label": label, "affine": affine, "root": root}


def start_pacs(root: Path, folders: list[Path], users: dict[str, str] | None = None) -> Orthanc:
    pacs = Orthanc(root, users).start()
    for folder in folders:
        pacs.upload_folder(folder)
    return pacs


@pytest.fixture(scope="module")
def open_pacs(series: dict, tmp_path_factory: pytest.TempPathFactory):
    """Orthanc without authentication holding all four series."""
    pacs = start_pacs(tmp_path_factory.mktemp("orthanc_open"), list(series["folders"].values()))
    yield pacs
    pacs.stop()


@pytest.fixture(scope="module")
def auth_pacs(series: dict, tmp_path_factory: pytest.TempPathFactory):
    """Orthanc with HTTP basic authentication holding the cine, the stack and the CT series."""
    folders = [series["folders"][name] for name in ("cine", "stack", "ct")]
    pacs = start_pacs(tmp_path_factory.mktemp("orthanc_auth"), folders, users={USER: PASSWORD})
    yield pacs
    pacs.stop()


@pytest.fixture
def pacs_lib(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """The app's ``lib.pacs`` imported as MONAI Label imports the app; a cache folder in ``tmp_path``."""
    from monailabel.config import settings

    monkeypatch.setattr(settings, "MONAI_LABEL_DATASTORE_CACHE_PATH", str(tmp_path / "cache"))
    monkeypatch.delenv("MONAI_LABEL_DICOMWEB_SEARCH_FILTER", raising=False)  # restored: the app exports its filter
    saved_path = list(sys.path)
    saved = {k: v for k, v in sys.modules.items() if k.split(".")[0] == "lib"}
    sys.path.insert(0, str(APP_DIR))
    import lib.pacs

    yield lib.pacs
    for key in [k for k in sys.modules if k.split(".")[0] == "lib"]:
        del sys.modules[key]
    sys.modules.update(saved)
    sys.path[:] = saved_path


def http_status(call) -> tuple[int, str]:
    with pytest.raises(Exception) as err:
        call()
    return getattr(err.value, "status_code", None), str(getattr(err.value, "detail", err.value))


# in-process --------------------------------------------------------------------------------------------------------
def test_connection_problems_say_their_cause_first(pacs_lib, auth_pacs: Orthanc) -> None:
    PacsSettings, connect = pacs_lib.PacsSettings, pacs_lib.connection.connect
    nowhere = f"http://127.0.0.1:{free_port()}/dicom-web"
    root_hint = "give --studies the DICOMweb root (Orthanc: http://<host>:8042/dicom-web)"
    cases = [
        (PacsSettings(nowhere), "Cannot reach the DICOMweb server", "check the host and port"),
        (PacsSettings(auth_pacs.dicomweb, USER, "wrong"), "Credentials refused (401 Unauthorized)", "check"),
        (PacsSettings(auth_pacs.dicomweb), "Credentials needed (401 Unauthorized)", "set MONAI_LABEL_DATASTORE"),
        (PacsSettings(f"{auth_pacs.url}/no-dicom-web", USER, PASSWORD), "Not a DICOMweb root (HTTP 404", root_hint),
        (PacsSettings(auth_pacs.url, USER, PASSWORD), "Not a DICOMweb root (HTTP 400", root_hint),  # the REST root
    ]
    for pacs, cause, fix in cases:
        with pytest.raises(pacs_lib.PacsConnectionError) as err:
            connect(pacs)
        check_refusal(str(err.value), cause, named=pacs.url, fix=fix)
    assert connect(PacsSettings(auth_pacs.dicomweb, USER, PASSWORD)) is not None


def test_dicom_proxy_gets_the_datastore_credentials(pacs_lib, monkeypatch) -> None:
    """MONAI Label's /proxy/dicom (OHIF's way to the PACS) reads only the deprecated credential settings."""
    from monailabel.config import Settings

    connection = pacs_lib.connection
    for prefix in ("MONAI_LABEL_DATASTORE", "MONAI_LABEL_DICOMWEB"):  # the documented names, then the deprecated
        monkeypatch.delenv("MONAI_LABEL_DATASTORE_USERNAME", raising=False)
        monkeypatch.delenv("MONAI_LABEL_DATASTORE_PASSWORD", raising=False)
        monkeypatch.setenv(f"{prefix}_USERNAME", f"{prefix}-user")
        monkeypatch.setenv(f"{prefix}_PASSWORD", "pw")
        monkeypatch.setattr(connection, "settings", Settings())
        connection.share_with_proxy(connection.pacs_settings("http://pacs.example/dicom-web"))
        assert connection.settings.MONAI_LABEL_DICOMWEB_USERNAME == f"{prefix}-user"
        assert connection.settings.MONAI_LABEL_DICOMWEB_PASSWORD == "pw"


def test_worklist_filter_and_credentials_come_from_monai_label_settings(pacs_lib, monkeypatch) -> None:
    import os

    from monailabel.config import Settings

    connection = pacs_lib.connection
    resolved = pacs_lib.pacs_settings("http://pacs.example/dicom-web/")
    assert resolved.url == "http://pacs.example/dicom-web" and resolved.search_filter == {"Modality": "MR"}
    assert os.environ["MONAI_LABEL_DICOMWEB_SEARCH_FILTER"] == '{"Modality": "MR"}'  # for the training subprocess
    monkeypatch.setenv("MONAI_LABEL_DICOMWEB_SEARCH_FILTER", '{"Modality": "MR", "SeriesDescription": "SAX*"}')
    monkeypatch.setenv("MONAI_LABEL_DICOMWEB_USERNAME", "legacy")  # MONAI Label's deprecated names still work
    monkeypatch.setenv("MONAI_LABEL_DICOMWEB_PASSWORD", "pw")
    monkeypatch.setattr(connection, "settings", Settings())
    user_set = connection.pacs_settings("http://pacs.example/dicom-web")
    assert user_set.search_filter == {"Modality": "MR", "SeriesDescription": "SAX*"}
    assert (user_set.username, user_set.password) == ("legacy", "pw")
    monkeypatch.setenv("MONAI_LABEL_DATASTORE_USERNAME", "current")
    monkeypatch.setenv("MONAI_LABEL_DATASTORE_PASSWORD", "pw2")
    monkeypatch.setattr(connection, "settings", Settings())
    assert connection.pacs_settings("http://pacs.example/dicom-web").username == "current"


def test_datastore_lists_converts_and_refuses(pacs_lib, open_pacs: Orthanc, series: dict, tmp_path: Path) -> None:
    uids = series["uids"]
    store = pacs_lib.open_pacs(open_pacs.dicomweb, BUNDLE_ROOT)
    try:
        mr = sorted(uids[name] for name in ("cine", "stack", "two_slices"))
        assert sorted(store.list_images()) == mr  # MR only: the CT series is not on the worklist
        listing = store.json()["objects"]
        assert sorted(listing) == mr and listing[uids["cine"]]["image"]["info"]["SeriesDescription"] == "SAX cine"

        grid = read_series_grid(series["folders"]["cine"])
        cine = nib.load(store.get_image_uri(uids["cine"]))
        assert cine.shape == (40, 40, 4, 4)
        np.testing.assert_array_equal(np.asarray(cine.dataobj), series["image"])  # slices and phases in order
        np.testing.assert_allclose(cine.affine, grid.affine, atol=1e-6)
        np.testing.assert_allclose(cine.affine, series["affine"], atol=1e-4)
        stack = nib.load(store.get_image_uri(uids["stack"]))
        assert stack.shape == (40, 40, 4)
        np.testing.assert_array_equal(np.asarray(stack.dataobj), series["image"][..., 0])

        status, detail = http_status(lambda: store.get_image_uri(uids["two_slices"]))
        assert status == 422
        check_refusal(detail, "2 slice position(s) is not a short-axis stack", named=uids["two_slices"])
        status, detail = http_status(lambda: store.get_image_uri("1.2.3.4"))
        assert status == 404
        check_refusal(detail, "No series 1.2.3.4 in the PACS", named="1.2.3.4", fix="GET /datastore/")

        wrong = write_nifti(tmp_path / "wrong.nii.gz", series["label"][:, :, :3], series["affine"])
        status, detail = http_status(lambda: store.save_label(uids["cine"], str(wrong), "final", {}))
        assert status == 422
        check_refusal(detail, "Label of shape (40, 40, 3, 4) does not match the series grid", uids["cine"], "nothing")
        shifted = series["affine"].copy()
        shifted[:3, 3] += 5.0
        moved = write_nifti(tmp_path / "moved.nii.gz", series["label"], shifted)
        status, detail = http_status(lambda: store.save_label(uids["cine"], str(moved), "final", {}))
        assert status == 422
        check_refusal(detail, "The label's affine is not the series grid's", uids["cine"], "nothing was stored")
        assert open_pacs.series_uids("SEG") == []  # nothing was sent
        status, detail = http_status(lambda: store.add_image("new", str(wrong), {}))
        assert status == 405
        check_refusal(detail, "Uploads are refused", fix="send images to the PACS")
    finally:
        store._observer.stop()


# on a server, as 3D Slicer drives it -------------------------------------------------------------------------------
def check_seg(files: list[bytes], source: Path, saved: np.ndarray) -> None:
    """Every SEG instance references the source series' instances, describes the three coded segments, and each
    frame's pixels are the saved label's voxels of its segment on the instance the frame references."""
    grid = read_series_grid(source)
    where = {str(h.SOPInstanceUID): (k, f) for k, row in enumerate(grid.headers) for f, h in enumerate(row)}
    headers = {uid: grid.headers[k][f] for uid, (k, f) in where.items()}
    saved = saved[..., None] if saved.ndim == 3 else saved
    seen = set()
    for content in files:
        seg = pydicom.dcmread(io.BytesIO(content))
        assert seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
        (referenced,) = seg.ReferencedSeriesSequence
        assert referenced.SeriesInstanceUID == grid.series_uid
        assert {str(i.ReferencedSOPInstanceUID) for i in referenced.ReferencedInstanceSequence} <= set(where)
        assert [s.SegmentLabel for s in seg.SegmentSequence] == list(LABELS)
        assert [int(s.SegmentNumber) for s in seg.SegmentSequence] == [1, 2, 3]
        assert all(s.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator == "SCT" for s in seg.SegmentSequence)
        pixels = seg.pixel_array.reshape(int(seg.NumberOfFrames), seg.Rows, seg.Columns)
        for frame, item in zip(pixels, seg.PerFrameFunctionalGroupsSequence, strict=True):
            number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
            uid = str(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
            k, f = where[uid]
            position = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
            np.testing.assert_allclose(position, [float(v) for v in headers[uid].ImagePositionPatient], atol=1e-3)
            np.testing.assert_array_equal(frame, (saved[:, :, k, f] == number).T)  # rows run along axis 1
            seen.add((number, k, f))
    drawn = {(n, k, f) for n in (1, 2, 3) for k in range(saved.shape[2]) for f in range(saved.shape[3])}
    assert {s for s in drawn if (saved[:, :, s[1], s[2]] == s[0]).any()} <= seen


@pytest.fixture(scope="module")
def site(auth_pacs: Orthanc, tmp_path_factory: pytest.TempPathFactory):
    """The app on a server whose studies are the authenticated Orthanc (right credentials), serving the oracle."""
    root = tmp_path_factory.mktemp("pacs_site")
    bundle = make_bundle_copy(root)
    oracle.install(bundle)
    app = copy_app(root / "app")
    env = {
        "MONAI_LABEL_DATASTORE_USERNAME": USER,
        "MONAI_LABEL_DATASTORE_PASSWORD": PASSWORD,
        "MONAI_LABEL_DATASTORE_CACHE_PATH": str(root / "cache"),
    }
    conf = {"bundle_path": str(bundle), "model_dir": str(root / "models"), "skip_scoring": "true"}
    server = LabelServer(app, auth_pacs.dicomweb, conf, cwd=root, env=env)
    try:
        yield {"server": server.wait_ready(), "root": root, "app": app, "bundle": bundle}
    finally:
        server.stop()


@pytest.mark.slow
def test_slicer_session_with_a_pacs(site: dict, auth_pacs: Orthanc, series: dict, tmp_path: Path) -> None:
    from monailabel.client import MONAILabelClient
    from monailabel.client.client import MONAILabelClientException

    c = MONAILabelClient(site["server"].url, tmpdir=str(tmp_path))
    uids = series["uids"]
    # worklist: the MR series of the PACS
    info = c.info()
    assert info["datastore"]["total"] == 2 and info["datastore"]["completed"] == 0
    assert sorted(c.datastore()["objects"]) == sorted([uids["cine"], uids["stack"]])
    assert c.next_sample("first", {})["id"] in (uids["cine"], uids["stack"])

    # Run: a 4D label on the cine's grid, with volumes per frame, function indices and the quality score
    label_file, params = c.infer("coopseg", uids["cine"], {})
    label, grid = nib.load(label_file), read_series_grid(series["folders"]["cine"])
    assert label.shape == grid.shape == (40, 40, 4, 4)
    np.testing.assert_allclose(label.affine, grid.affine, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(label.dataobj), series["label"])
    expected = function_from_cine(measure_volumes(series["label"], grid.affine), uids["cine"])
    for key, value in expected.indices().items():
        assert params["function"][key] == pytest.approx(value, abs=0.01), key
    assert (params["function"]["ed_frame"], params["function"]["es_frame"]) == (0, 2)
    assert len(params["volumes_ml"]["lv"]) == 4 and params["quality"]["flag"] is False
    assert 0.0 < params["quality"]["disagreement_score"] < configured_quality_threshold()

    # Submit Label: a corrected label goes to the PACS as DICOM-SEG on the source instances
    corrected = np.asarray(label.dataobj).copy()
    corrected[:, :, 1, 2][corrected[:, :, 1, 2] == 3] = 0  # no RV on slice 1 of phase 2
    submitted = write_nifti(tmp_path / "corrected.nii.gz", corrected, label.affine)
    label_info = {"label_info": [{"name": name, "idx": i} for i, name in enumerate(LABELS, start=1)]}
    assert c.save_label(uids["cine"], str(submitted), tag="final", params=label_info)["label"] == uids["cine"]
    (seg_uid,) = auth_pacs.series_uids("SEG")
    files = auth_pacs.instance_files(seg_uid)
    assert len(files) == 4  # one SEG instance per phase
    check_seg(files, series["folders"]["cine"], corrected)

    # a label that does not fit the series: 422 naming the series and the problem; nothing sent
    wrong = write_nifti(tmp_path / "wrong.nii.gz", corrected[:-2], label.affine)
    with pytest.raises(MONAILabelClientException) as err:
        c.save_label(uids["cine"], str(wrong), tag="final", params=label_info)
    assert "Status: 422" in err.value.msg
    check_refusal(detail_of(err.value.msg), "Label of shape", named=uids["cine"], fix="nothing was stored")
    assert auth_pacs.series_uids("SEG") == [seg_uid]

    # a single-phase series: 3D label, one SEG instance
    stack_file, stack_params = c.infer("coopseg", uids["stack"], {})
    stack = nib.load(stack_file)
    assert stack.shape == (40, 40, 4) and "function" not in stack_params
    np.testing.assert_array_equal(np.asarray(stack.dataobj), series["label"][..., 0])
    c.save_label(uids["stack"], stack_file, tag="final", params=label_info)
    (stack_seg,) = set(auth_pacs.series_uids("SEG")) - {seg_uid}
    check_seg(auth_pacs.instance_files(stack_seg), series["folders"]["stack"], series["label"][..., 0])
    assert c.info()["datastore"]["completed"] == 2


def expect_stop(server: LabelServer, cwd: Path, *needles: str) -> None:
    assert server.wait_exit() != 0
    log = server.log_tail(300)
    for needle in needles:
        assert needle in log, log
    assert sorted(p.name for p in cwd.iterdir()) == [server.log.name]  # no local folder instead of the PACS


@pytest.mark.slow
def test_server_stops_on_an_unreachable_url(site: dict, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/dicom-web"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    conf = {"bundle_path": str(site["bundle"]), "model_dir": str(tmp_path / "models")}
    env = {"MONAI_LABEL_DATASTORE_CACHE_PATH": str(cwd / "cache")}
    server = LabelServer(site["app"], url, conf, cwd=cwd, env=env)
    expect_stop(server, cwd, f"Cannot reach the DICOMweb server {url}")


@pytest.mark.slow
def test_server_stops_on_a_wrong_password(site: dict, auth_pacs: Orthanc, tmp_path: Path) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    conf = {"bundle_path": str(site["bundle"]), "model_dir": str(tmp_path / "models")}
    env = {
        "MONAI_LABEL_DATASTORE_USERNAME": USER,
        "MONAI_LABEL_DATASTORE_PASSWORD": "not-the-password",
        "MONAI_LABEL_DATASTORE_CACHE_PATH": str(cwd / "cache"),
    }
    server = LabelServer(site["app"], auth_pacs.dicomweb, conf, cwd=cwd, env=env)
    expect_stop(server, cwd, f"Credentials refused (401 Unauthorized) by the DICOMweb server {auth_pacs.dicomweb}")
