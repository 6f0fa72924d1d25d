"""Release archive: packaging and its refusals, then download, verify, load and infer as a user who never trains."""

from __future__ import annotations

import functools
import http.server
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from monai.apps.utils import HashCheckError
from monai.bundle import download, download_large_files, load

from conftest import BUNDLE_ROOT, REPO_ROOT
from helpers import make_source_bundle
from scripts.data.phantom import write_phantom_dataset
from scripts.model.networks import CoopSegNet
from tools.release import (
    CHECKSUM_FILE,
    ChecksumError,
    ReleaseError,
    main,
    package,
    sha256_file,
    unresolved_citations,
    verify_checksums,
)

NAME = "coopseg"
VERSION = json.loads((BUNDLE_ROOT / "configs" / "metadata.json").read_text())["version"]
ARCHIVE = f"{NAME}_v{VERSION}.zip"
URL_BASE = "https://example.org/releases/download/test"  # only written into large_files.yml by most tests


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A static HTTP server on 127.0.0.1 (free port) in a thread: ``(base URL, served folder)``."""
    root = tmp_path_factory.mktemp("served")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="module")
def released(tmp_path_factory: pytest.TempPathFactory, server: tuple[str, Path]) -> dict:
    """Package a bundle with untrained weights, publish the archive and the weights on the local server."""
    base_url, served = server
    source = make_source_bundle(tmp_path_factory.mktemp("src"))
    dist = tmp_path_factory.mktemp("dist")
    weights_url = f"{base_url}/weights"
    archive = package(source, dist, url_base=weights_url, name=NAME)
    shutil.copy2(archive, served / archive.name)
    with zipfile.ZipFile(archive) as z:
        for w in ("model.pt", "model.ts"):
            (served / "weights").mkdir(exist_ok=True)
            (served / "weights" / w).write_bytes(z.read(f"{NAME}/models/{w}"))
    return {"source": source, "dist": dist, "archive": archive, "base_url": base_url, "served": served}


def _env() -> dict[str, str]:
    # the downloaded bundle's own code, not the repository's; no proxy for the loopback server
    return {**os.environ, "PYTHONPATH": "", "no_proxy": "127.0.0.1,localhost", "NO_PROXY": "127.0.0.1,localhost"}


def _download(url: str, bundle_dir: Path) -> subprocess.CompletedProcess:
    """Exactly the user's command."""
    args = [sys.executable, "-m", "monai.bundle", "download", "--name", NAME, "--version", VERSION, "--url", url,
            "--bundle_dir", str(bundle_dir)]  # fmt: skip
    return subprocess.run(args, cwd=bundle_dir.parent, env=_env(), capture_output=True, text=True, timeout=300)


def _verify_cli(bundle: Path) -> subprocess.CompletedProcess:
    """The repository's release tool run on a downloaded bundle, from the repository root as documented."""
    args = [sys.executable, "-m", "tools.release", "verify", str(bundle)]
    return subprocess.run(args, cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, timeout=300)


# -- packaging ---------------------------------------------------------------------------------------------------------


def test_archive_layout_checksums_and_large_files(released: dict) -> None:
    archive: Path = released["archive"]
    assert archive.name == ARCHIVE
    with zipfile.ZipFile(archive) as z:
        names = set(z.namelist())
        assert all(n.startswith(f"{NAME}/") for n in names), "everything under the top folder <name>/"
        for required in (
            "LICENSE",
            "configs/metadata.json",
            "configs/inference.json",
            "configs/train.json",
            "configs/multi_gpu_train.json",
            "scripts/__init__.py",
            "scripts/model/networks.py",
            "scripts/engine/trainer.py",
            "scripts/inference/inferer.py",
            "docs/README.md",
            "docs/method.md",
            "models/model.pt",
            "models/model.ts",
            "large_files.yml",
            CHECKSUM_FILE,
        ):
            assert f"{NAME}/{required}" in names, required  # fmt: skip
        assert not any("__pycache__" in n or n.endswith(".pyc") or "model_final" in n for n in names)
        # only what a bundle user runs: the development tools stay in the repository
        assert not any(n.startswith(f"{NAME}/tools/") or "release" in n or "robustness" in n for n in names), names
        listed = z.read(f"{NAME}/{CHECKSUM_FILE}").decode().splitlines()
        assert {line.split("  ", 1)[1] for line in listed} == {n[len(NAME) + 1 :] for n in names} - {CHECKSUM_FILE}
        state = torch.load(io.BytesIO(z.read(f"{NAME}/models/model.pt")), weights_only=True)
        large = yaml.safe_load(z.read(f"{NAME}/large_files.yml"))
    source_state = torch.load(released["source"] / "models" / "model.pt", weights_only=True)
    assert all(torch.equal(state[k], source_state[k]) for k in source_state)
    assert large["version"] == VERSION
    assert [e["path"] for e in large["large_files"]] == ["models/model.pt", "models/model.ts"]
    for entry in large["large_files"]:
        assert (
            entry["hash_type"] == "md5" and entry["url"] == f"{released['base_url']}/weights/{Path(entry['path']).name}"
        )
        assert entry["hash_val"] == sha256_file(released["served"] / "weights" / Path(entry["path"]).name, "md5")
    # the release is recorded in the source bundle's large_files.yml, and the archive hash is published beside it
    assert yaml.safe_load((released["source"] / "large_files.yml").read_text()) == large
    sidecar = archive.with_name(archive.name + ".sha256").read_text().split()
    assert sidecar == [sha256_file(archive), archive.name]


def test_the_release_holds_what_it_cites(released: dict, tmp_path: Path) -> None:
    """Unzipped, the archive resolves every relative link, cited file and docs/method.md section in its own files,
    and its documents name no repository path outside the bundle."""
    with zipfile.ZipFile(released["archive"]) as z:
        z.extractall(tmp_path)
    bundle = tmp_path / NAME
    cited_method = [p for p in (bundle / "scripts").rglob("*.py") if "docs/method.md section" in p.read_text()]
    assert len(cited_method) > 10 and (bundle / "docs" / "method.md").is_file()
    assert "](method.md)" in (bundle / "docs" / "README.md").read_text()
    assert unresolved_citations(bundle) == []
    # what the check reports
    (bundle / "docs" / "extra.md").write_text(
        "[ok](method.md) [gone](../../docs/method.md) `configs/nope.json` (docs/method.md section 99) "
        "`model/networks.py` `tools/release.py` `medseg/elsewhere.py`\n"
    )
    problems = "\n".join(unresolved_citations(bundle))
    assert "link ../../docs/method.md not in the bundle" in problems
    assert "cites configs/nope.json" in problems and "section 99" in problems
    assert "'tools/'" in problems and "'../'" in problems
    assert "link method.md" not in problems  # the link that resolves
    assert "networks.py" not in problems and "medseg" not in problems  # code under scripts/; another repository


def test_refuses_without_trained_weights(tmp_path: Path) -> None:
    source = make_source_bundle(tmp_path, weights=False)
    with pytest.raises(ReleaseError, match="no trained weights at .*model.pt"):
        package(source, tmp_path / "dist", url_base=URL_BASE)
    assert not (tmp_path / "dist" / ARCHIVE).exists()


def test_refuses_weights_that_do_not_fit(tmp_path: Path) -> None:
    source = make_source_bundle(tmp_path, weights=False)
    torch.save(CoopSegNet(width=4).state_dict(), source / "models" / "model.pt")
    with pytest.raises(ReleaseError, match="does not load into network_def"):
        package(source, tmp_path / "dist", url_base=URL_BASE)


def test_refuses_a_released_version(released: dict, tmp_path: Path) -> None:
    # the source bundle recorded VERSION as released: packaging it again (anywhere) is refused
    with pytest.raises(ReleaseError, match=f"version {VERSION} is already released"):
        package(released["source"], tmp_path / "other_dist", url_base=URL_BASE)
    # without the record, an existing archive of that version is never overwritten
    fresh = make_source_bundle(tmp_path)
    with pytest.raises(ReleaseError, match="already exists"):
        package(fresh, released["dist"], url_base=URL_BASE)


def test_refuses_a_version_that_is_not_the_newest_changelog_entry(tmp_path: Path) -> None:
    source = make_source_bundle(tmp_path)
    meta_path = source / "configs" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["changelog"] = {"9.0.0": "a later entry", **meta["changelog"]}
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ReleaseError, match=f"version {VERSION} is not the newest changelog entry \\(9.0.0\\)"):
        package(source, tmp_path / "dist", url_base=URL_BASE)
    del meta["changelog"][VERSION]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ReleaseError, match="has no changelog entry"):
        package(source, tmp_path / "dist", url_base=URL_BASE)


# -- download, verify, load, infer -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def downloaded(released: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    bundles = tmp_path_factory.mktemp("user") / "bundles"
    bundles.mkdir()
    result = _download(f"{released['base_url']}/{ARCHIVE}", bundles)
    assert result.returncode == 0, result.stderr[-3000:]
    return bundles


def test_download_verify_load_and_infer(downloaded: Path, released: dict, tmp_path: Path) -> None:
    bundle = downloaded / NAME
    verified = _verify_cli(bundle)
    assert verified.returncode == 0 and "files match checksums.sha256" in verified.stdout, verified.stderr
    # monai.bundle.load as users call it: the network of the inference workflow with the released weights
    net = load(name=NAME, bundle_dir=str(downloaded), workflow_type="inference", device="cpu", progress=False)
    assert isinstance(net, CoopSegNet)
    released_state = torch.load(bundle / "models" / "model.pt", weights_only=True)
    assert all(torch.equal(v, released_state[k]) for k, v in net.state_dict().items())
    scripted, meta, extra = load(
        name=NAME, bundle_dir=str(downloaded), load_ts_module=True, config_files=("inference.json",), progress=False
    )
    assert meta["version"] == VERSION and json.loads(extra["inference.json"])["width"] == 16
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(scripted.eval()(x), net.eval()(x), rtol=1e-4, atol=1e-4)

    # the downloaded bundle's inference workflow on a phantom volume
    phantom = write_phantom_dataset(str(tmp_path / "phantom"), 1, seed=5, n_slices_range=(4, 5))[0]
    inputs, out = tmp_path / "inputs", tmp_path / "out"
    inputs.mkdir()
    image_path = inputs / "case_ED.nii.gz"
    shutil.copy2(tmp_path / "phantom" / phantom["image"], image_path)
    args = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(bundle / "configs" / "inference.json"),
            "--dataset_dir", str(inputs), "--output_dir", str(out)]  # fmt: skip
    result = subprocess.run(args, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = sorted(out.glob("case_ED*seg*.nii.gz"))
    assert len(outputs) == 1, list(out.iterdir())
    seg, image = nib.load(outputs[0]), nib.load(image_path)
    assert seg.shape == image.shape
    np.testing.assert_allclose(seg.affine, image.affine, atol=1e-4)
    values = np.unique(np.asarray(seg.dataobj))
    assert set(values.tolist()) <= {0, 1, 2, 3}


def test_large_files_download_with_md5(released: dict, tmp_path: Path) -> None:
    """The model-zoo mechanism (`python -m monai.bundle download_large_files`): weights by URL, md5 checked."""
    bundle = tmp_path / "b"
    bundle.mkdir()
    with zipfile.ZipFile(released["archive"]) as z:
        (bundle / "large_files.yml").write_bytes(z.read(f"{NAME}/large_files.yml"))
    download_large_files(bundle_path=str(bundle))
    for w in ("model.pt", "model.ts"):
        assert (bundle / "models" / w).read_bytes() == (released["served"] / "weights" / w).read_bytes()
    # a served file that differs from the recorded md5 is refused
    tampered = tmp_path / "t"
    tampered.mkdir()
    large = yaml.safe_load((bundle / "large_files.yml").read_text())
    large["large_files"][0]["hash_val"] = "0" * 32
    (tampered / "large_files.yml").write_text(yaml.safe_dump(large))
    with pytest.raises(HashCheckError, match="md5 hash check of downloaded file failed"):
        download_large_files(bundle_path=str(tampered))


def test_corrupted_archive_is_refused(released: dict, tmp_path: Path) -> None:
    """Bytes damaged in transit inside the weights: the download fails, and the partial folder fails verification."""
    data = bytearray(released["archive"].read_bytes())
    with zipfile.ZipFile(released["archive"]) as z:
        info = z.getinfo(f"{NAME}/models/model.pt")
    middle = info.header_offset + 100 + info.compress_size // 2
    data[middle : middle + 64] = bytes(255 - b for b in data[middle : middle + 64])
    (released["served"] / "corrupt").mkdir(exist_ok=True)
    (released["served"] / "corrupt" / ARCHIVE).write_bytes(bytes(data))
    bundles = tmp_path / "bundles"
    with pytest.raises(Exception, match="Bad CRC-32|Error -3 while decompressing"):  # what the CLI exits with
        download(name=NAME, version=VERSION, url=f"{released['base_url']}/corrupt/{ARCHIVE}", bundle_dir=str(bundles))
    with pytest.raises(ChecksumError, match="checksum mismatch|not found"):
        verify_checksums(bundles / NAME)


def test_checksum_mismatch_is_refused(released: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A well-formed archive whose weights were replaced after release: download succeeds, verification refuses."""
    tampered = io.BytesIO()
    other = io.BytesIO()
    torch.save(CoopSegNet().state_dict(), other)
    with zipfile.ZipFile(released["archive"]) as src, zipfile.ZipFile(tampered, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            payload = other.getvalue() if item.filename == f"{NAME}/models/model.pt" else src.read(item)
            dst.writestr(item.filename, payload)
    (released["served"] / "tampered").mkdir(exist_ok=True)
    (released["served"] / "tampered" / ARCHIVE).write_bytes(tampered.getvalue())
    bundles = tmp_path / "bundles"
    download(name=NAME, version=VERSION, url=f"{released['base_url']}/tampered/{ARCHIVE}", bundle_dir=str(bundles))
    with pytest.raises(ChecksumError, match=r"checksum mismatch .*\(1 of \d+ files\): models/model.pt: sha256"):
        verify_checksums(bundles / NAME)
    assert main(["verify", str(bundles / NAME)]) == 1
    err = capsys.readouterr().err
    assert "models/model.pt" in err and "download the archive again" in err


def test_downloaded_bundle_passes_the_model_zoo_checks(downloaded: Path) -> None:
    """`python -m tools.zoo_checks` (the zoo CI's checks, offline) on the bundle exactly as users receive it."""
    from tools.zoo_checks import CHECKS

    bundle = downloaded / NAME
    args = [sys.executable, "-m", "tools.zoo_checks", str(bundle)]
    result = subprocess.run(args, cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    for name in CHECKS:
        assert f"[PASS] {name}" in result.stdout
    assert f"all {len(CHECKS)} passed" in result.stdout
