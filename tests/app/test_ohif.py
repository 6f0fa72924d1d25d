"""OHIF in a real browser: headless Chromium on the app's ``/ohif/``, the app on an Orthanc with basic authentication,
credentials set the documented way (``MONAI_LABEL_DATASTORE_USERNAME`` / ``_PASSWORD``).

What a person sees is checked on screenshots (a viewport's canvas: an image drawn, then coloured overlay pixels over
it), and what OHIF holds is checked against the known masks (:mod:`oracle`): the labelmap OHIF draws after running
``coopseg`` from its MONAI Label panel is the cine's mask of the phase on screen, slice by slice, and a label saved
through the app (the call 3D Slicer makes) comes back from the PACS as a DICOM-SEG that OHIF draws on the right
images. Screenshots, the browser console and the server log of a failure are kept (see :mod:`ohif`).
"""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import oracle
import pydicom
import pytest
from ohif import OhifPage, artefacts_on_failure, coloured, dominant, inside

from helpers import make_bundle_copy, write_cine_series, write_nifti
from scripts.inference.dicom import read_series_grid
from tools.servers import LabelServer, Orthanc, copy_app
from tools.servers.chromium import Chromium

USER, PASSWORD = "ohif-reader", "pw-0hif"
BLANK_SLICE = 3  # the cine's last slice holds no heart: its mask must be empty wherever OHIF puts it
BRIGHT = 60  # grey level above which a canvas pixel shows the heart phantom


# data and servers --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A 4-phase cine (its last slice empty) and a single-phase stack, each in its own study, with their masks."""
    root = tmp_path_factory.mktemp("ohif_dicom")
    image, label, affine = oracle.coded_cine()
    cine_image, cine_label = image.copy(), label.copy()
    cine_image[:, :, BLANK_SLICE], cine_label[:, :, BLANK_SLICE] = 0, 0
    folders = {
        "cine": write_cine_series(root / "cine", cine_image, affine, seed=5, SeriesDescription="SAX cine"),
        "stack": write_cine_series(root / "stack", image[..., 0], affine, seed=6, SeriesDescription="SAX ED"),
    }
    headers = {name: pydicom.dcmread(next(folder.iterdir())) for name, folder in folders.items()}
    return {
        "folders": folders,
        "uids": {name: str(h.SeriesInstanceUID) for name, h in headers.items()},
        "studies": {name: str(h.StudyInstanceUID) for name, h in headers.items()},
        "labels": {"cine": cine_label, "stack": label[..., 0]},
        "affine": affine,
    }


@pytest.fixture(scope="module")
def site(series: dict, tmp_path_factory: pytest.TempPathFactory):
    """Orthanc with basic auth holding both series, the app on it serving the oracle network, and Chromium."""
    root = tmp_path_factory.mktemp("ohif_site")
    pacs = Orthanc(root / "orthanc", users={USER: PASSWORD}).start()
    server = browser = None
    try:
        for folder in series["folders"].values():
            pacs.upload_folder(folder)
        bundle = make_bundle_copy(root)
        oracle.install(bundle)
        env = {
            "MONAI_LABEL_DATASTORE_USERNAME": USER,
            "MONAI_LABEL_DATASTORE_PASSWORD": PASSWORD,
            "MONAI_LABEL_DATASTORE_CACHE_PATH": str(root / "cache"),
        }
        conf = {"bundle_path": str(bundle), "model_dir": str(root / "models"), "skip_scoring": "true"}
        server = LabelServer(copy_app(root / "app"), pacs.dicomweb, conf, cwd=root, env=env)
        browser = Chromium(root / "chromium").start()
        server.wait_ready()
        yield {"pacs": pacs, "server": server, "page": OhifPage(browser, server), "root": root}
    finally:
        for process in (browser, server, pacs):
            if process is not None:
                process.stop()


# helpers -----------------------------------------------------------------------------------------------------------
LABELMAP_SLICES = """((segmentationId) => {
  const seg = cst.segmentation.state.getSegmentation(segmentationId);
  if (!seg) return null;
  return seg.representationData.Labelmap.imageIds.map(id => {
    const image = cs.cache.getImage(id);
    const plane = cs.metaData.get('imagePlaneModule', image.referencedImageId);
    return {position: plane.imagePositionPatient, rows: image.rows, columns: image.columns,
            values: Array.from(image.voxelManager.getScalarData())};
  });
})"""


def slice_of(folder: Path) -> dict[tuple[float, ...], int]:
    """Slice index of each ImagePositionPatient of a series (rounded to 0.01 mm)."""
    grid = read_series_grid(folder)
    return {
        tuple(np.round([float(v) for v in row[0].ImagePositionPatient], 2)): k for k, row in enumerate(grid.headers)
    }


def check_labelmap(slices: list[dict] | None, folder: Path, expected: np.ndarray) -> None:
    """OHIF's labelmap images, each on the image it references, equal ``expected`` (``H, W, D``) slice by slice."""
    assert slices, "OHIF holds no labelmap"
    where = slice_of(folder)
    seen = set()
    for item in slices:
        k = where[tuple(np.round(item["position"], 2))]
        drawn = np.asarray(item["values"], dtype=np.uint8).reshape(item["rows"], item["columns"])
        np.testing.assert_array_equal(drawn, expected[:, :, k].T, err_msg=f"slice {k}")  # rows run along axis 1
        seen.add(k)
    assert seen == set(range(expected.shape[2]))


def wait_for_pixels(page: OhifPage, test, what: str, timeout: float = 30.0) -> np.ndarray:
    """The first viewport's canvas once it exists and ``test(pixels)`` holds (rendering lags behind OHIF's state)."""
    import time

    deadline = time.time() + timeout
    while True:
        pixels = page.canvas(0)
        if pixels is not None and test(pixels):
            return pixels
        if time.time() > deadline:
            shown = "no viewport canvas on the page" if pixels is None else "the canvas shows something else"
            raise AssertionError(f"{what}: not on screen within {timeout:g} s ({shown})")
        time.sleep(1.0)


# tests -------------------------------------------------------------------------------------------------------------
def test_proxy_signs_in_with_the_datastore_credentials(site: dict, series: dict) -> None:
    """OHIF reads the PACS through MONAI Label's /proxy/dicom: it must get the studies, not a 401."""
    response = httpx.get(f"{site['server'].url}/proxy/dicom/qido/studies", timeout=30)
    assert response.status_code == 200, response.text[:300]
    found = {item["0020000D"]["Value"][0] for item in response.json()}
    assert found == set(series["studies"].values())


@pytest.mark.slow
def test_study_list_shows_the_pacs_studies(site: dict, series: dict) -> None:
    page = site["page"]
    with artefacts_on_failure(page, "study_list"):
        page.open("", "document.body.innerText.includes('Studies')")
        page.wait_text("Phantom, CoopSeg", 60, "the PACS's studies in OHIF's study list")
        rows = page.browser.evaluate(
            """Object.fromEntries([...document.querySelectorAll('tr[data-cy^="studyRow-"]')]"""
            r""".map(r => [r.getAttribute('data-cy').slice(9), r.innerText.trim().split(/\s+/).pop()]))"""
        )
        stored = len(site["pacs"].get("/studies").json())
        studies = series["studies"]
        assert rows == {studies["cine"]: "16", studies["stack"]: "4"} and stored == 2, rows  # with their instances
        # a study opens in OHIF's MONAI Label mode from its row
        page.click(f"document.querySelector('tr[data-cy=\"studyRow-{studies['cine']}\"]')", "the cine's study row")
        page.wait_text("MONAI Label", 30, "the MONAI Label mode's button for the study")


@pytest.mark.slow
def test_cine_rendered_and_coopseg_mask_drawn_on_it(site: dict, series: dict) -> None:
    page = site["page"]
    with artefacts_on_failure(page, "cine_coopseg"):
        page.open(
            f"monai-label?StudyInstanceUIDs={series['studies']['cine']}",
            "!!window.services && document.querySelectorAll('canvas.cornerstone-canvas').length === 3",
        )
        # the cine is drawn: a grey heart phantom on black
        before = wait_for_pixels(page, lambda p: (p.max(axis=-1) > BRIGHT).sum() > 200, "the cine's image")
        volume = page.state(
            "(() => { const v = services.cornerstoneViewportService.getRenderingEngine().getViewports()[0];"
            " const vol = cs.cache.getVolume(v.getAllVolumeIds()[0]);"
            " return {timepoints: vol.numTimePoints, shown: vol.timePointIndex, dims: vol.dimensions}; })()"
        )
        assert volume["timepoints"] == 4 and volume["dims"] == [40, 40, 4], volume

        page.connect_panel()
        page.run_model("coopseg")
        after = wait_for_pixels(page, lambda p: coloured(before, p).sum() > 100, "the coopseg mask over the cine")
        mask, image = coloured(before, after), before.max(axis=-1) > BRIGHT
        assert inside(mask, image), "the mask is not drawn over the heart"
        assert mask.sum() < 2 * image.sum()  # an overlay on the heart, not a tinted viewport

        # the mask OHIF holds is the mask of the phase on screen, on every slice (the last one empty)
        expected = series["labels"]["cine"][..., volume["shown"]]
        check_labelmap(page.state(f"{LABELMAP_SLICES}('1')"), series["folders"]["cine"], expected)


@pytest.mark.slow
def test_coopseg_mask_drawn_on_a_single_phase_series(site: dict, series: dict) -> None:
    page = site["page"]
    with artefacts_on_failure(page, "stack_coopseg"):
        page.open(
            f"monai-label?StudyInstanceUIDs={series['studies']['stack']}",
            "!!window.services && document.querySelectorAll('canvas.cornerstone-canvas').length === 3",
        )
        before = wait_for_pixels(page, lambda p: (p.max(axis=-1) > BRIGHT).sum() > 200, "the stack's image")
        page.connect_panel()
        page.run_model("coopseg")
        after = wait_for_pixels(page, lambda p: coloured(before, p).sum() > 100, "the coopseg mask over the stack")
        assert inside(coloured(before, after), before.max(axis=-1) > BRIGHT), "the mask is not drawn over the heart"
        check_labelmap(page.state(f"{LABELMAP_SLICES}('1')"), series["folders"]["stack"], series["labels"]["stack"])


@pytest.mark.slow
def test_saved_label_comes_back_from_the_pacs_as_seg_drawn_on_the_right_images(
    site: dict, series: dict, tmp_path: Path
) -> None:
    from monailabel.client import MONAILabelClient

    page, uid = site["page"], series["uids"]["stack"]
    corrected = series["labels"]["stack"].copy()
    corrected[:, :, 1][corrected[:, :, 1] == 3] = 0  # no RV on slice 1: a label that differs from slice to slice
    label = write_nifti(tmp_path / "corrected.nii.gz", corrected, series["affine"])
    client = MONAILabelClient(site["server"].url, tmpdir=str(tmp_path))
    names = {"label_info": [{"name": n, "idx": i} for i, n in enumerate(("lv", "myocardium", "rv"), start=1)]}
    client.save_label(uid, str(label), tag="final", params=names)
    assert len(site["pacs"].series_uids("SEG")) == 1

    with artefacts_on_failure(page, "saved_seg"):
        page.open(
            f"viewer?StudyInstanceUIDs={series['studies']['stack']}",
            "!!window.services && document.querySelectorAll('[data-cy^=\"study-browser-thumbnail\"]').length === 2",
        )
        before = wait_for_pixels(page, lambda p: (p.max(axis=-1) > BRIGHT).sum() > 200, "the stack's image")
        seg_thumbnail = (
            "[...document.querySelectorAll('[data-cy^=\"study-browser-thumbnail\"]')]"
            ".find(e => e.innerText.includes('CoopSeg segmentation'))"
        )
        page.click(seg_thumbnail, "the SEG's thumbnail", count=2)
        page.click(
            "[...document.querySelectorAll('button')].find(b => b.innerText.trim() === 'Yes')",
            "OHIF's 'open this segmentation?' prompt",
            timeout=60,
        )
        # the segments in their recommended colours (LV red, myocardium green, RV blue), over the heart
        after = wait_for_pixels(
            page,
            lambda p: all((dominant(p, c) & ~dominant(before, c)).sum() > 20 for c in range(3)),
            "the SEG's three segments in their colours",
        )
        image = before.max(axis=-1) > BRIGHT
        drawn = [dominant(after, c) & ~dominant(before, c) for c in range(3)]
        assert all(inside(segment, image) for segment in drawn), "the SEG is not drawn over the heart"

        seg = page.state("services.displaySetService.getActiveDisplaySets().find(d => d.Modality === 'SEG')"
                         ".displaySetInstanceUID")  # fmt: skip
        check_labelmap(page.state(f"{LABELMAP_SLICES}({seg!r})"), series["folders"]["stack"], corrected)
