"""Background scoring is a polite PACS client, counted by the PACS itself (Orthanc's log of the requests it served).

A PACS holds 20 MR series, 5 of them unusable (two slices only). The server's scoring pass at start retrieves
nothing; a user's inference retrieves its series; each later pass retrieves at most ``scoring_retrievals`` series,
scores what is retrieved, and remembers the unusable ones with their reason, so none is retrieved twice; a series
that changes in the PACS is tried once more.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import oracle
import pydicom
import pytest

from helpers import make_bundle_copy, write_cine_series
from tools.servers import LabelServer, Orthanc, copy_app

USABLE, UNUSABLE, PER_PASS = 15, 5, 10


def series_uid(folder: Path) -> str:
    return str(pydicom.dcmread(next(folder.iterdir())).SeriesInstanceUID)


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("scoring_pacs")
    image, _, affine = oracle.coded_cine()
    usable, unusable = [], []
    for n in range(USABLE):
        usable.append(
            write_cine_series(root / "dicom" / f"u{n}", image[..., 0], affine, seed=n, SeriesDescription="SAX")
        )
    for n in range(UNUSABLE):
        two = write_cine_series(
            root / "dicom" / f"x{n}", image[:, :, :2, 0], affine, shuffle=False, SeriesDescription="2"
        )
        unusable.append(two)
    orthanc = Orthanc(root / "orthanc", log_http=True).start()
    try:
        for folder in usable + unusable:
            orthanc.upload_folder(folder)
        yield {
            "orthanc": orthanc,
            "usable": usable,
            "unusable": unusable,
            "root": root,
            "image": image,
            "affine": affine,
        }
    finally:
        orthanc.stop()


def run_pass(server: LabelServer) -> None:
    response = httpx.post(f"{server.url}/scoring/disagreement", json={}, timeout=60)
    assert response.status_code == 200, response.text
    server.wait_idle("scoring", timeout=300)


@pytest.mark.slow
def test_scoring_retrieves_a_bounded_number_per_pass_and_never_an_unusable_series_twice(
    pacs: dict, tmp_path: Path
) -> None:
    from monailabel.client import MONAILabelClient

    orthanc: Orthanc = pacs["orthanc"]
    usable = [series_uid(f) for f in pacs["usable"]]
    unusable = [series_uid(f) for f in pacs["unusable"]]
    bundle = make_bundle_copy(tmp_path)
    oracle.install(bundle)
    conf = {"bundle_path": str(bundle), "model_dir": str(tmp_path / "models"), "scoring_retrievals": str(PER_PASS)}
    env = {"MONAI_LABEL_DATASTORE_CACHE_PATH": str(tmp_path / "cache")}
    server = LabelServer(copy_app(tmp_path / "app"), orthanc.dicomweb, conf, cwd=tmp_path, env=env)
    try:
        server.wait_ready().wait_idle("scoring", timeout=300)
        assert orthanc.series_retrievals() == {}, "the scoring pass at start retrieved series"

        # a user opens one series: it is retrieved for them, and scoring may then use it for free
        mark = len(orthanc.requests())
        MONAILabelClient(server.url, tmpdir=str(tmp_path)).infer("coopseg", usable[0], {})
        assert orthanc.series_retrievals(mark) == {usable[0]: 1}

        total: dict[str, int] = {usable[0]: 1}
        for _ in range((USABLE + UNUSABLE - 1 + PER_PASS - 1) // PER_PASS):  # 19 series left: 2 passes
            mark = len(orthanc.requests())
            run_pass(server)
            retrieved = orthanc.series_retrievals(mark)
            assert 0 < len(retrieved) <= PER_PASS and set(retrieved.values()) == {1}, retrieved
            for uid in retrieved:
                total[uid] = total.get(uid, 0) + 1
        assert total == {uid: 1 for uid in usable + unusable}  # every series once, unusable ones included

        objects = httpx.get(f"{server.url}/datastore/", params={"output": "all"}, timeout=60).json()["objects"]
        assert all("coopseg_scores" in objects[uid]["image"]["info"] for uid in usable)
        (memory,) = (tmp_path / "models" / "scoring").glob("failed_*.json")
        failed = json.loads(memory.read_text())
        assert sorted(failed) == sorted(unusable)
        assert all(
            entry["reason"].startswith("2 slice position(s)") and "/tmp" not in entry["reason"]
            for entry in failed.values()
        )

        # the next pass retrieves only a series that changed in the PACS (a third slice arrived): the unusable ones
        # that did not change stay remembered, the scored ones are current
        changed = unusable[0]
        first = pydicom.dcmread(next(pacs["unusable"][0].iterdir()))
        same = {k: str(getattr(first, k)) for k in ("SeriesInstanceUID", "StudyInstanceUID", "FrameOfReferenceUID")}
        three = write_cine_series(pacs["root"] / "three", pacs["image"][:, :, :3, 0], pacs["affine"], shuffle=False,
                                  SeriesDescription="2", **same)  # fmt: skip
        orthanc.upload([p for p in three.iterdir() if p.name.endswith("_00002.dcm")])
        mark = len(orthanc.requests())
        run_pass(server)
        assert orthanc.series_retrievals(mark) == {changed: 1}
        failed = json.loads(memory.read_text())
        assert changed not in failed or failed[changed]["version"] == "instances=3"
    finally:
        server.stop()
