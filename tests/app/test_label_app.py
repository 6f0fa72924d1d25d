"""The MONAI Label app end to end: a real server on 127.0.0.1, driven as the 3D Slicer plugin drives it.

The server is a subprocess (``python -m monailabel.main start_server``) on a free port, polled until ready and
stopped by its PID. It serves a temporary copy of the app and of the bundle (fresh weights), over a studies folder of
four small phantom volumes; calls go through MONAI Label's own Python client (``monailabel.client``).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from refusals import check_refusal, detail_of

from helpers import make_bundle_copy, phantom_volume, write_nifti
from tools.servers import APP_DIR, LabelServer, copy_app

pytestmark = pytest.mark.slow

N_IMAGES = 4


def md5(path: Path) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): md5(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def small_training(bundle: Path) -> None:
    """Test-sized training in the bundle copy: 48 x 48 crops, batch 4, no loader worker (code paths unchanged)."""
    config_path = bundle / "configs" / "train.json"
    config = json.loads(config_path.read_text())
    config.update(crop_size=48, batch_size=4, num_workers=0)
    config_path.write_text(json.dumps(config, indent=1))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A bundle copy, an app copy, a studies folder with four phantom volumes, their labels aside, and the server."""
    root = tmp_path_factory.mktemp("label_app")
    bundle = make_bundle_copy(root)
    small_training(bundle)
    app = copy_app(root / "app")
    studies = root / "studies"
    labels = root / "labels"
    studies.mkdir()
    labels.mkdir()
    for i in range(N_IMAGES):
        image, label, affine = phantom_volume(seed=40 + i)
        write_nifti(studies / f"case{i}.nii.gz", image, affine)
        write_nifti(labels / f"case{i}.nii.gz", label, affine)
    bundle_before = tree_digest(bundle)
    model_dir = root / "app_models"
    server = LabelServer(
        app, studies, {"bundle_path": str(bundle), "model_dir": str(model_dir)}, cwd=root, log=root / "server.log"
    )
    try:
        server.wait_ready()
        yield {
            "root": root,
            "bundle": bundle,
            "app": app,
            "studies": studies,
            "labels": labels,
            "server": server,
            "live": model_dir / "coopseg" / "models" / "model.pt",
            "bundle_before": bundle_before,
        }
    finally:
        server.stop()


def client(site: dict, tmp: Path):
    from monailabel.client import MONAILabelClient

    tmp.mkdir(parents=True, exist_ok=True)
    return MONAILabelClient(site["server"].url, tmpdir=str(tmp))


def check_label(path: str, image: Path) -> np.ndarray:
    """The returned label has the image's shape and affine and only the codes 0-3."""
    label, source = nib.load(path), nib.load(image)
    assert label.shape == source.shape
    np.testing.assert_allclose(label.affine, source.affine, atol=1e-4)
    values = np.asarray(label.dataobj)
    assert set(np.unique(values).tolist()) <= {0, 1, 2, 3}
    return values


def test_server_listens_on_loopback_only(site: dict) -> None:
    import psutil

    listening = [
        c
        for c in psutil.Process(site["server"].process.pid).net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    ]
    assert listening and {c.laddr.ip for c in listening} == {"127.0.0.1"}


def test_slicer_session(site: dict, tmp_path: Path) -> None:
    """/info/, datastore, active learning, infer, submit labels, train, poll, infer again with the new weights."""
    c = client(site, tmp_path)
    studies = site["studies"]
    # 1. /info/
    info = c.info()
    assert info["labels"] == ["lv", "myocardium", "rv"]
    types = {"coopseg": "segmentation", "coopseg_fast": "segmentation"}
    types.update(coopseg_scribbles="scribbles", coopseg_clicks="deepgrow")  # corrections (test_interactive_app.py)
    assert {name: model["type"] for name, model in info["models"].items()} == types
    for model in info["models"].values():
        assert model["labels"] == {"lv": 1, "myocardium": 2, "rv": 3}
    assert set(info["trainers"]) == {"coopseg"}
    assert {"multi_gpu", "gpus", "tracking"} <= set(info["trainers"]["coopseg"]["config"])  # MONAI Label's own
    assert set(info["strategies"]) == {"disagreement", "random", "first"} and set(info["scoring"]) == {"disagreement"}
    assert info["weights"]["available"] is True
    # 2. datastore listing
    listing = c.datastore()
    assert sorted(listing["objects"]) == [f"case{i}" for i in range(N_IMAGES)]
    # 3. active learning
    assert c.next_sample("first", {})["id"] == "case0"
    assert c.next_sample("random", {})["id"] in listing["objects"]
    # disagreement scores are computed in the background after the start and kept in the datastore
    deadline, scores = time.time() + 300, {}
    while time.time() < deadline:
        objects = c.datastore()["objects"]
        scores = {i: o["image"]["info"].get("coopseg_scores") for i, o in objects.items()}
        if all(scores.values()):
            break
        time.sleep(1)
    assert all(scores.values()), f"background scoring did not score every image: {scores}"
    ranked = sorted(scores, key=lambda i: -scores[i]["disagreement"])
    first_annotator = c.next_sample("disagreement", {"client_id": "annotator_a"})
    second_annotator = c.next_sample("disagreement", {"client_id": "annotator_b"})
    assert [first_annotator["id"], second_annotator["id"]] == ranked[:2], "concurrent annotators got the same image"
    assert 0.0 < first_annotator["disagreement"] <= 1.0
    # 4. /infer/coopseg?image=... (and the FTN-only model)
    first_file, params = c.infer("coopseg", "case0", {})
    assert params["label_names"] == {"lv": 1, "myocardium": 2, "rv": 3}
    first = check_label(first_file, studies / "case0.nii.gz")
    fast_file, _ = c.infer("coopseg_fast", "case0", {})
    fast = check_label(fast_file, studies / "case0.nii.gz")
    assert (first != fast).any(), "FTN-only and FTN + STN gave identical masks"
    # 5. PUT /datastore/label, as Slicer sends it
    label_info = {"label_info": [{"name": "lv", "idx": 1}, {"name": "myocardium", "idx": 2}, {"name": "rv", "idx": 3}]}
    for i in (0, 1):
        saved = c.save_label(f"case{i}", str(site["labels"] / f"case{i}.nii.gz"), tag="final", params=label_info)
        assert saved["label"] == f"case{i}"
    assert md5(studies / "labels" / "final" / "case0.nii.gz") == md5(site["labels"] / "case0.nii.gz")
    # 6. POST /train/coopseg with Slicer's options (run_id "" included), then GET /train/ until done
    live, before_hash = site["live"], md5(site["live"])
    before_state = torch.load(live, weights_only=True)
    c.train_start("coopseg", {"device": "cpu", "pretrained": True, "max_epochs": 1, "val_split": 0.2, "run_id": ""})
    deadline, status = time.time() + 900, {}
    while time.time() < deadline:
        status = c.train_status()
        if status.get("status") in ("DONE", "ERROR", "STOPPED"):
            break
        time.sleep(2)
    assert status.get("status") == "DONE", f"training ended {status.get('status')}: {status.get('details')}"
    # 7. new weights, warm-started from the old ones (both networks), the source bundle untouched
    assert md5(live) != before_hash
    after_state = torch.load(live, weights_only=True)
    for part in ("image_encoder", "segmentation_decoder", "shape_encoder", "shape_decoder"):
        keys = [k for k in before_state if k.startswith(f"{part}.") and before_state[k].ndim == 4]  # conv weights
        change = np.mean([float((after_state[k] - before_state[k]).norm() / before_state[k].norm()) for k in keys])
        assert 0 < change < 0.3, f"{part}: relative change {change:.3f} (not warm-started, or not trained)"
    assert tree_digest(site["bundle"]) == site["bundle_before"], "training wrote into the source bundle"
    assert "fine-tuned" in c.info()["weights"]["message"]
    # 8. the second inference uses the new weights
    second_file, _ = c.infer("coopseg", "case0", {})
    second = check_label(second_file, studies / "case0.nii.gz")
    assert (second != first).any(), "the second inference did not change: new weights not live"
    # the app wrote only into git-ignored folders of its own directory
    ignored = set((APP_DIR / ".gitignore").read_text().split())
    new = {
        p.relative_to(site["app"]).parts[0] + "/"
        for p in site["app"].rglob("*")
        if p.relative_to(site["app"]).parts[0] not in {q.name for q in APP_DIR.iterdir()}
    }
    assert new <= ignored, f"the app wrote outside its ignored folders: {new - ignored}"


def _expect_error(call, status: int, *needles: str) -> str:
    from monailabel.client.client import MONAILabelClientException

    with pytest.raises(MONAILabelClientException) as err:
        call()
    assert f"Status: {status}" in err.value.msg, err.value.msg
    detail = detail_of(err.value.msg)
    check_refusal(detail, detail[:1])  # one short sentence, no server path
    for needle in needles:
        assert needle.lower() in detail.lower(), detail
    return detail


def test_bad_inputs_are_refused_and_nothing_is_lost(site: dict, tmp_path: Path) -> None:
    c = client(site, tmp_path / "client")
    studies, server = site["studies"], site["server"]
    c.save_label("case2", str(site["labels"] / "case2.nii.gz"), tag="final", params={})
    final = studies / "labels" / "final"
    kept = {p.name: md5(p) for p in final.iterdir()}
    image, label, affine = phantom_volume(seed=60)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "notes.txt").write_text("not an image\n")
    good = write_nifti(bad / "good.nii.gz", image, affine)
    (bad / "truncated.nii.gz").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    write_nifti(bad / "flat.nii.gz", image[:, :, 0], affine)
    write_nifti(bad / "nan.nii.gz", np.full_like(image, np.nan), affine)
    write_nifti(bad / "wrong_shape.nii.gz", label[:-4], affine)

    _expect_error(lambda: c.upload_image(str(bad / "notes.txt"), "notes"), 422, "notes", "cannot be read as an image")
    assert server.alive()
    truncated = str(bad / "truncated.nii.gz")
    _expect_error(lambda: c.upload_image(truncated, "truncated"), 422, "truncated", "cannot be read")
    _expect_error(lambda: c.infer("coopseg", "", {}, file=str(bad / "truncated.nii.gz")), 422, "cannot be read")
    assert server.alive()
    _expect_error(lambda: c.upload_image(str(bad / "flat.nii.gz"), "flat"), 422, "flat", "2D image")
    _expect_error(lambda: c.upload_image(str(bad / "nan.nii.gz"), "nan"), 422, "nan", "NaN")
    _expect_error(lambda: c.infer("coopseg", "", {}, file=str(bad / "nan.nii.gz")), 422, "NaN")
    assert server.alive()
    _expect_error(lambda: c.infer("coopseg", "no_such_case", {}), 404, "no_such_case", "no image 'no_such_case' in")
    _expect_error(lambda: c.save_label("no_such_case", str(bad / "good.nii.gz")), 404, "no_such_case")
    _expect_error(lambda: c.save_label("case2", str(bad / "wrong_shape.nii.gz")), 422, "case2", "does not match")
    _expect_error(lambda: c.save_label("case2", str(bad / "notes.txt")), 422, "cannot be read")
    assert server.alive()
    # nothing was added, every earlier label is intact, and the good upload still works
    assert sorted(c.datastore()["objects"]) == [f"case{i}" for i in range(N_IMAGES)]
    assert {p.name: md5(p) for p in final.iterdir()} == kept
    assert c.upload_image(str(good), "fresh")["image"] == "fresh"
    # a corrected label replaces the earlier one, which is kept in the label history
    original = nib.load(site["labels"] / "case2.nii.gz")
    corrected = np.asarray(original.dataobj).copy()
    corrected[corrected == 3] = 0
    c.save_label("case2", str(write_nifti(bad / "case2_corrected.nii.gz", corrected, original.affine)), tag="final")
    assert md5(final / "case2.nii.gz") != kept["case2.nii.gz"]
    history = list((studies / ".label_history" / "final").iterdir())
    assert [md5(p) for p in history] == [kept["case2.nii.gz"]]


def test_default_host_is_refused(site: dict, tmp_path: Path) -> None:
    """Without -i, MONAI Label would listen on every interface (0.0.0.0); the app refuses to start."""
    server = LabelServer(
        site["app"],
        site["studies"],
        {"bundle_path": str(site["bundle"]), "model_dir": str(tmp_path)},
        cwd=site["root"],
        log=tmp_path / "server.log",
        host_args=(),
    )
    try:
        server.process.wait(timeout=300)
    finally:
        server.stop()
    assert server.process.returncode != 0
    assert "refusing MONAI Label's default host 0.0.0.0" in server.log_tail(200)


def test_eight_concurrent_inferences(site: dict, tmp_path: Path) -> None:
    results: dict[int, object] = {}

    def run(i: int) -> None:
        try:
            out, _ = client(site, tmp_path / f"c{i}").infer("coopseg", f"case{i % N_IMAGES}", {})
            results[i] = check_label(out, site["studies"] / f"case{i % N_IMAGES}.nii.gz")
        except Exception as e:  # reported below with the request's index
            results[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    failures = {i: r for i, r in results.items() if isinstance(r, Exception)}
    assert len(results) == 8 and not failures, failures
    for i in range(4, 8):  # the same image gives the same mask whatever ran beside it
        np.testing.assert_array_equal(results[i], results[i - 4])
    assert site["server"].alive()


def test_corrections_through_the_server(site: dict, tmp_path: Path) -> None:
    """The interactive models as the Slicer plugin calls them (DeepGrow clicks on the stored mask, a scribbles label
    map uploaded with its label_info); bad corrections are a 422 over HTTP and leave the datastore as it was."""
    c = client(site, tmp_path / "client")
    image = site["studies"] / "case3.nii.gz"
    mask_file, _ = c.infer("coopseg", "case3", {"save_label": True})  # the automatic mask, stored as "original"
    mask_img = nib.load(mask_file)
    mask = np.asarray(mask_img.dataobj).astype(np.uint8)
    k = mask.shape[2] // 2
    i, j = mask.shape[0] // 2, mask.shape[1] // 2
    out, params = c.infer(
        "coopseg_clicks", "case3", {"label": "lv", "foreground": [[i, j, k]], "background": [], "slice": k}
    )
    values = check_label(out, image)
    assert set(np.unique(values).tolist()) <= {0, 1} and values[i, j, k] == 1
    assert params["prior"] == "datastore label 'original'" and params["corrected"][0]["slice"] == k
    label_map = mask.copy()
    label_map[i - 3 : i + 4, j, k] = 5  # a foreground scribble of the RV
    scribbles = write_nifti(tmp_path / "scribbles.nii.gz", label_map, mask_img.affine)
    info = [{"name": n, "id": v} for v, n in enumerate(["lv", "myocardium", "rv", "background_scribbles"], 1)]
    info.append({"name": "foreground_scribbles", "id": 5})
    out, _ = c.infer("coopseg_scribbles", "case3", {"label_info": info, "selected_label_name": "rv"}, str(scribbles))
    assert (check_label(out, image)[i - 3 : i + 4, j, k] == 1).all()
    before = tree_digest(site["studies"])
    bad = {"label": "lv", "foreground": [[i, j, mask.shape[2]]], "background": [], "slice": mask.shape[2]}
    _expect_error(lambda: c.infer("coopseg_clicks", "case3", bad), 422, "outside the image")
    empty = write_nifti(tmp_path / "no_scribble.nii.gz", mask, mask_img.affine)
    args = ("coopseg_scribbles", "case3", {"label_info": info, "selected_label_name": "rv"}, str(empty))
    _expect_error(lambda: c.infer(*args), 422, "empty scribble")
    assert tree_digest(site["studies"]) == before
