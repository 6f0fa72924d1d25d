"""The offline model-zoo checks (tools.zoo_checks): each one fails on the defect it exists for.

The full run on a complete release bundle (all checks pass) is in test_release.py, on the downloaded archive.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import torch
import yaml

from conftest import BUNDLE_ROOT
from helpers import make_source_bundle
from scripts.model.networks import CoopSegNet
from tools.release import sha256_file
from tools.zoo_checks import run_checks, version_key


def _result(root: Path, name: str):
    (result,) = run_checks(root, [name])
    return result


def test_repository_bundle_passes_the_checks_that_need_no_weights() -> None:
    results = {r.name: r for r in run_checks(BUNDLE_ROOT, ["version", "metadata", "properties", "no_weights_in_git"])}
    assert all(r.ok for r in results.values()), results
    assert "tracked files, no weights" in results["no_weights_in_git"].detail


def test_version_and_metadata_checks_fail_on_defects(tmp_path: Path) -> None:
    source = make_source_bundle(tmp_path, weights=False)
    meta_path = source / "configs" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "changelog": {"0.0.1": "older only"}}))
    assert "is not a key of changelog" in _result(source, "version").detail
    broken = {k: v for k, v in meta.items() if k != "authors"}
    meta_path.write_text(json.dumps(broken))
    result = _result(source, "metadata")
    assert not result.ok and "authors" in result.detail
    del meta["network_data_format"]["outputs"]["pred"]["num_channels"]
    meta_path.write_text(json.dumps(meta))
    assert not _result(source, "metadata").ok
    assert version_key("0.10.0") > version_key("0.9.3")


def test_properties_and_net_checks_fail_on_defects(tmp_path: Path) -> None:
    source = make_source_bundle(tmp_path, weights=False)
    config_path = source / "configs" / "inference.json"
    config = json.loads(config_path.read_text())
    del config["inferer"]
    config_path.write_text(json.dumps(config))
    result = _result(source, "properties")
    assert not result.ok and "inferer" in result.detail
    assert not _result(source, "files").ok  # no models/model.pt


def test_torchscript_and_large_files_checks(tmp_path: Path) -> None:
    source = make_source_bundle(tmp_path)
    large = {
        "large_files": [
            {
                "path": "models/model.pt",
                "url": "https://example.org/model.pt",
                "hash_val": sha256_file(source / "models" / "model.pt", "md5"),
                "hash_type": "md5",
            }
        ]
    }
    (source / "large_files.yml").write_text(yaml.safe_dump(large))  # fmt: skip
    assert _result(source, "large_files").ok
    assert _result(source, "torchscript").ok
    # weights that do not fit network_def, and an md5 that no longer matches
    torch.save(CoopSegNet(width=4).state_dict(), source / "models" / "model.pt")
    assert not _result(source, "torchscript").ok
    result = _result(source, "large_files")
    assert not result.ok and "differs from hash_val" in result.detail
    large["large_files"][0].update(url="", hash_val="")
    (source / "large_files.yml").write_text(yaml.safe_dump(large))
    detail = _result(source, "large_files").detail
    assert "not an http(s) URL" in detail and "32-digit hash_val" in detail


def test_weights_tracked_by_git_fail(tmp_path: Path) -> None:
    source = make_source_bundle(tmp_path)
    git = ["git", "-C", str(source)]
    subprocess.run(git + ["init", "-q"], check=True)
    subprocess.run(git + ["add", "configs", "LICENSE"], check=True)
    assert _result(source, "no_weights_in_git").ok
    subprocess.run(git + ["add", "-f", "models/model.pt"], check=True)
    result = _result(source, "no_weights_in_git")
    assert not result.ok and "model.pt" in result.detail
