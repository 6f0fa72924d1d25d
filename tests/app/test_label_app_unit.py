"""The MONAI Label app in-process (no server): no-weights statement, TorchScript weights, workspace seeding, options."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import BUNDLE_ROOT, REPO_ROOT
from helpers import make_bundle_copy, phantom_volume, write_nifti
from scripts.model.networks import CoopSegNet
from tools.servers import APP_DIR


def studies_with_one_image(root: Path) -> Path:
    studies = root / "studies"
    studies.mkdir()
    image, _, affine = phantom_volume(seed=70, n_slices=4)
    write_nifti(studies / "case0.nii.gz", image, affine)
    return studies


def test_default_bundle_is_the_repository_bundle() -> None:
    sys.path.insert(0, str(APP_DIR))
    try:
        from lib.workspace import resolve_source_bundle

        assert resolve_source_bundle({}, str(APP_DIR)) == BUNDLE_ROOT.resolve()
        with pytest.raises(FileNotFoundError, match="bundle_path"):
            resolve_source_bundle({"bundle_path": str(REPO_ROOT / "tests")}, str(APP_DIR))
    finally:
        sys.path.remove(str(APP_DIR))
        sys.modules.pop("lib.workspace", None)
        sys.modules.pop("lib", None)


def test_bind_host_rules() -> None:
    sys.path.insert(0, str(APP_DIR))
    try:
        from lib.security import check_bind_host

        argv = ["monailabel/main.py", "start_server", "--app", "a", "--studies", "s"]
        with pytest.raises(RuntimeError, match="refusing MONAI Label's default host 0.0.0.0"):
            check_bind_host(argv, auth_enabled=False)
        check_bind_host([*argv, "-i", "127.0.0.1"], auth_enabled=False)
        check_bind_host([*argv, "--host", "0.0.0.0"], auth_enabled=True)  # told otherwise, with authentication
        check_bind_host(["-m", "train"], auth_enabled=False)  # the training subprocess is not a server
    finally:
        sys.path.remove(str(APP_DIR))
        sys.modules.pop("lib.security", None)
        sys.modules.pop("lib", None)


def test_no_weights_statement_then_weights_go_live(app_modules, tmp_path: Path) -> None:
    bundle = make_bundle_copy(tmp_path)
    (bundle / "models" / "model.pt").unlink()
    conf = {"bundle_path": str(bundle), "model_dir": str(tmp_path / "models")}
    app = app_modules.CoopSegApp(str(APP_DIR), str(studies_with_one_image(tmp_path)), conf)
    info = app.info()
    assert info["weights"]["available"] is False
    assert info["weights"]["message"].startswith("NO TRAINED WEIGHTS YET")
    assert info["description"].startswith("NO TRAINED WEIGHTS YET")
    assert info["models"] == {} and info["labels"] == ["lv", "myocardium", "rv"] and "coopseg" in info["trainers"]
    with pytest.raises(Exception) as err:
        app.infer({"model": "coopseg", "image": "case0", "device": "cpu"})
    assert err.value.status_code == 503 and "NO TRAINED WEIGHTS" in err.value.detail
    # weights appearing in the app's models folder (as after training from scratch) go live without a restart
    torch.save(CoopSegNet().state_dict(), app.workspace.models / "model.pt")
    assert set(app.info()["models"]) == {"coopseg", "coopseg_fast", "coopseg_scribbles", "coopseg_clicks"}
    result = app.infer({"model": "coopseg", "image": "case0", "device": "cpu"})
    assert nib.load(result["label"]).shape == nib.load(tmp_path / "studies" / "case0.nii.gz").shape


def test_torchscript_weights_serve_when_model_pt_is_absent(app_modules, tmp_path: Path) -> None:
    bundle = make_bundle_copy(tmp_path, torchscript=True)
    conf = {"bundle_path": str(bundle), "model_dir": str(tmp_path / "models")}
    app = app_modules.CoopSegApp(str(APP_DIR), str(studies_with_one_image(tmp_path)), conf)
    assert app.info()["weights"]["file"].endswith("model.ts")
    outputs = {}
    for model in ("coopseg", "coopseg_fast"):
        result = app.infer({"model": model, "image": "case0", "device": "cpu"})
        label, source = nib.load(result["label"]), nib.load(tmp_path / "studies" / "case0.nii.gz")
        assert label.shape == source.shape
        np.testing.assert_allclose(label.affine, source.affine, atol=1e-4)
        outputs[model] = np.asarray(label.dataobj)
        assert set(np.unique(outputs[model]).tolist()) <= {0, 1, 2, 3}
    task = app._infers["coopseg"]
    assert task.network is None and task.path == [str(app.workspace.models / "model.ts")]  # TorchScript, not eager
    # the same weights as a state dict give the same mask
    eager = make_bundle_copy(tmp_path / "eager", seed=0)
    app_pt = app_modules.CoopSegApp(
        str(APP_DIR), str(tmp_path / "studies"), {"bundle_path": str(eager), "model_dir": str(tmp_path / "m2")}
    )
    pt = np.asarray(nib.load(app_pt.infer({"model": "coopseg", "image": "case0", "device": "cpu"})["label"]).dataobj)
    assert (pt == outputs["coopseg"]).mean() > 0.999


def test_workspace_follows_new_bundle_weights_and_keeps_the_old(tmp_path: Path) -> None:
    sys.path.insert(0, str(APP_DIR))
    try:
        from lib.workspace import Workspace

        bundle = make_bundle_copy(tmp_path, seed=1)
        ws = Workspace(bundle, tmp_path / "models").prepare()
        digest = lambda p: hashlib.md5(Path(p).read_bytes()).hexdigest()  # noqa: E731
        assert (ws.path / "scripts").resolve() == (bundle / "scripts").resolve()
        for config in (bundle / "configs").iterdir():
            assert (ws.path / "configs" / config.name).resolve() == config.resolve()
        (ws.path / "configs" / "monailabel_train.json").write_text("{}")  # as MONAI Label's multi-GPU path does
        assert not (bundle / "configs" / "monailabel_train.json").exists()
        assert digest(ws.weights()) == digest(bundle / "models" / "model.pt")
        fine_tuned = ws.models / "model.pt"
        torch.save(CoopSegNet().state_dict(), fine_tuned)  # as training writes it
        tuned = digest(fine_tuned)
        ws.prepare()  # restart, bundle unchanged: the fine-tuned weights stay live
        assert digest(ws.weights()) == tuned
        torch.save(CoopSegNet().state_dict(), bundle / "models" / "model.pt")  # the bundle is retrained
        ws.prepare()
        assert digest(ws.weights()) == digest(bundle / "models" / "model.pt")
        assert [digest(p) for p in (ws.models / "backup").rglob("model.pt")] == [tuned]
    finally:
        sys.path.remove(str(APP_DIR))
        for key in [k for k in sys.modules if k == "lib" or k.startswith("lib.")]:
            del sys.modules[key]


def _app_with_images(app_modules, root: Path, n: int = 3, **conf: str):
    bundle = make_bundle_copy(root)
    studies = root / "studies"
    studies.mkdir()
    for i in range(n):
        image, _, affine = phantom_volume(seed=80 + i, n_slices=3)
        write_nifti(studies / f"case{i}.nii.gz", image, affine)
    conf = {"bundle_path": str(bundle), "model_dir": str(root / "models"), **conf}
    return app_modules.CoopSegApp(str(APP_DIR), str(studies), conf)


def _hand_out(app, strategy: str, client_id: str) -> dict:
    """``POST /activelearning/<strategy>`` as MONAI Label's endpoint serves it: select, then record the lease."""
    import time

    result = app.next_sample({"strategy": strategy, "client_id": client_id})
    info = app.datastore().get_image_info(result["id"]).get("strategy", {})
    info[strategy] = {"ts": int(time.time()), "client_id": client_id}
    app.datastore().update_image_info(result["id"], {"strategy": info})
    return result


def test_disagreement_scores_live_in_the_datastore_and_the_strategy_only_reads_them(app_modules, tmp_path: Path):
    app = _app_with_images(app_modules, tmp_path)
    assert "disagreement" in app.info()["scoring"]
    with pytest.raises(Exception) as err:  # before any scoring: a clear 409, not an inference in the request
        app.next_sample({"strategy": "disagreement"})
    assert err.value.status_code == 409 and "POST /scoring/disagreement" in err.value.detail

    first = app.scoring({"method": "disagreement", "device": "cpu"})
    assert sorted(first["scored"]) == ["case0", "case1", "case2"] and not first["failed"]
    scores = {i: app.datastore().get_image_info(i)["coopseg_scores"] for i in first["scored"]}
    assert all(0.0 < s["disagreement"] <= 1.0 and 0.0 < s["entropy"] <= 1.0 for s in scores.values())
    assert app.scoring({"method": "disagreement", "device": "cpu"})["kept"] == ["case0", "case1", "case2"]

    task = app._infers["coopseg"]
    task.uncertainty_scores = lambda *a, **k: pytest.fail("the strategy ran the network")
    ranked = sorted(scores, key=lambda i: -scores[i]["disagreement"])
    a = _hand_out(app, "disagreement", "annotator_a")
    b = _hand_out(app, "disagreement", "annotator_b")  # at the same time: another image
    assert [a["id"], b["id"]] == ranked[:2] and a["disagreement"] == pytest.approx(scores[ranked[0]]["disagreement"])
    assert _hand_out(app, "disagreement", "annotator_a")["id"] == ranked[2]  # asking again: the next one
    assert _hand_out(app, "disagreement", "annotator_c")["reissued"] is True  # all leased: the oldest lease
    by_entropy = app.next_sample({"strategy": "disagreement", "metric": "entropy"})
    assert by_entropy["entropy"] == pytest.approx(scores[by_entropy["id"]]["entropy"])

    # new weights (fine-tuning) make every stored score stale: scoring computes them again
    torch.manual_seed(5)
    torch.save(CoopSegNet().state_dict(), app.workspace.models / "model.pt")
    del task.uncertainty_scores
    again = app.scoring({"method": "disagreement", "device": "cpu"})
    assert sorted(again["scored"]) == ["case0", "case1", "case2"] and again["weights"] != first["weights"]


def test_trainer_options_extend_monai_labels_own(app_modules, tmp_path: Path) -> None:
    app = _app_with_images(app_modules, tmp_path, n=1)
    config = app.info()["trainers"]["coopseg"]["config"]
    assert {"device", "pretrained", "max_epochs", "val_split", "multi_gpu", "gpus", "tracking", "tracking_uri"} <= set(
        config
    )
    assert config["max_epochs"] == 10


def test_inference_only_deployment(app_modules, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``--conf retain_cpu_memory false`` too: the app leaves glibc's allocator alone (no single arena, and the
    inferer keeps no freed memory)."""
    asked = []
    real = app_modules.bundle_module
    monkeypatch.setattr(app_modules, "bundle_module", lambda bundle, name: asked.append(name) or real(bundle, name))
    app = _app_with_images(
        app_modules,
        tmp_path,
        n=1,
        skip_trainers="true",
        skip_strategies="true",
        skip_scoring="true",
        retain_cpu_memory="false",
    )
    info = app.info()
    assert info["trainers"] == {} and info["strategies"] == {} and info["scoring"] == {}
    assert set(info["models"]) == {"coopseg", "coopseg_fast", "coopseg_scribbles", "coopseg_clicks"}
    assert "cpu_memory" not in asked and "labels" in asked
    assert all(
        not task.bundle_config.get_parsed_content("inferer").retain_cpu_memory
        for name, task in app._infers.items()
        if name in ("coopseg", "coopseg_fast")
    )
    result = app.infer({"model": "coopseg", "image": "case0", "device": "cpu"})
    assert nib.load(result["label"]).shape == nib.load(tmp_path / "studies" / "case0.nii.gz").shape


def test_training_is_tracked_in_a_local_mlflow_store(app_modules, tmp_path: Path) -> None:
    import json

    import mlflow

    app = _app_with_images(app_modules, tmp_path, n=2)
    train_json = app.workspace.source / "configs" / "train.json"
    config = json.loads(train_json.read_text())
    config.update(crop_size=32, batch_size=2, num_workers=0, width=16)
    train_json.write_text(json.dumps(config))
    for i in range(2):
        _, label, affine = phantom_volume(seed=80 + i, n_slices=3)
        app.datastore().save_label(f"case{i}", str(write_nifti(tmp_path / f"l{i}.nii.gz", label, affine)), "final", {})
    store = f"sqlite:///{tmp_path / 'mlruns.db'}"  # a local file (MLflow 3 dropped its plain-folder store)
    app.train(
        {
            "model": "coopseg",
            "device": "cpu",
            "max_epochs": 1,
            "val_split": 0.5,
            "tracking": "mlflow",
            "tracking_uri": store,
            "tracking_experiment_name": "coopseg_test",
            "multi_gpu": False,
        }
    )
    client = mlflow.tracking.MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name("coopseg_test")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    assert {"train_loss", "train_hard_seg"} <= set(run.data.metrics)


class _PacsLike:
    """A datastore that retrieves like the PACS one: ``retrievals`` counts the images fetched, ``versions`` say when
    an image changed, ``unusable`` and ``flaky`` images fail with 422 and 502."""

    def __init__(self, cached: set[str], images: list[str], unusable: set[str], flaky: set[str]) -> None:
        from lib.errors import http_error

        self.http_error = http_error
        self.images, self.cached, self.unusable, self.flaky = images, set(cached), unusable, flaky
        self.versions = {image: "1" for image in images}
        self.info: dict[str, dict] = {}
        self.retrievals: list[str] = []

    def get_unlabeled_images(self) -> list[str]:
        return list(self.images)

    def get_image_info(self, image_id: str) -> dict:
        return self.info.get(image_id, {})

    def update_image_info(self, image_id: str, info: dict) -> None:
        self.info.setdefault(image_id, {}).update(info)

    def is_retrieved(self, image_id: str) -> bool:
        return image_id in self.cached

    def image_version(self, image_id: str) -> str:
        return self.versions[image_id]

    def get_image_uri(self, image_id: str) -> str:
        if image_id not in self.cached:
            self.retrievals.append(image_id)
            self.cached.add(image_id)
        if image_id in self.unusable:
            raise self.http_error(422, f"2 slice position(s) is not a short-axis stack in series {image_id}.")
        if image_id in self.flaky:
            raise self.http_error(502, "the PACS did not answer.")
        return image_id


def test_scoring_retrieves_within_its_limit_and_remembers_unusable_images(app_modules, tmp_path: Path) -> None:
    from lib.scoring import SCORE_KEY, DisagreementScoring

    weights = tmp_path / "model.ts"
    weights.write_bytes(b"weights")

    class Task:
        def live_weights(self) -> Path:
            return weights

        def uncertainty_scores(self, image: str, device: str | None = None) -> dict:
            return {"disagreement": 0.1, "entropy": 0.2}

    images = ["a", "b", "bad", "c", "flaky"]
    store = _PacsLike(cached={"a"}, images=images, unusable={"bad"}, flaky={"flaky"})
    memory = tmp_path / "scoring" / "failed.json"
    scoring = DisagreementScoring(lambda: Task(), retrievals=2, memory=memory)

    start = scoring({"retrievals": 0}, store)  # the pass at start: the cached image only
    assert start["scored"] == ["a"] and store.retrievals == [] and start["not_retrieved"] == ["b", "bad", "c", "flaky"]
    first = scoring({}, store)
    assert store.retrievals == ["b", "bad"] and first["scored"] == ["b"] and list(first["failed"]) == ["bad"]
    second = scoring({}, store)
    assert store.retrievals == ["b", "bad", "c", "flaky"] and second["skipped"] == {"bad": first["failed"]["bad"]}
    assert list(second["failed"]) == ["flaky"]  # a PACS that did not answer: tried again, not remembered
    third = scoring({}, store)
    assert store.retrievals == ["b", "bad", "c", "flaky"] and list(third["failed"]) == ["flaky"]
    assert sorted(third["kept"]) == ["a", "b", "c"] and all(SCORE_KEY in store.info[i] for i in "abc")

    store.versions["bad"] = "2"  # the series changed in the PACS: tried once more
    store.unusable.discard("bad")
    fourth = DisagreementScoring(lambda: Task(), retrievals=2, memory=memory)({}, store)  # a new pass, a new process
    assert "bad" in fourth["scored"] and "bad" not in memory.read_text()
