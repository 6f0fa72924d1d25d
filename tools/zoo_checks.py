"""The checks the MONAI model zoo's CI applies to a new bundle (zoo ``ci/verify_bundle.py``, full mode), offline.

Usage (prints one line per check, exits 1 if any fails)::

    python -m tools.zoo_checks <bundle_dir>            # e.g. bundle/, or an extracted release archive

Checks, in the zoo's order:

* ``files``: ``configs/metadata.json`` and ``LICENSE`` (required), ``models/model.pt`` and ``configs/inference.json``
  (preferred; required here because the release ships them).
* ``version``: ``version`` is a key of ``changelog`` and its newest entry.
* ``metadata``: ``monai.bundle.verify_metadata`` with :data:`METADATA_SCHEMA`. The zoo downloads its schema file from
  the URL in ``metadata.json``, which cannot be fetched offline; this schema is CoopSeg's reconstruction of the fields
  the bundle specification (``mb_specification.rst``) makes mandatory, not the zoo's file.
* ``properties``: the ids that ``monai.bundle.properties`` requires for the inference (and, if present, training)
  workflow exist in the configs (as ``ConfigWorkflow.check_properties``, without instantiating the workflow).
* ``net_in_out``: ``monai.bundle.verify_net_in_out(network_def)`` with ``inference.json``.
* ``torchscript``: ``monai.bundle.ckpt_export(network_def)`` of ``models/model.pt`` without ``key_in_ckpt`` (flat state
  dict), the export loaded and compared with the eager network; ``models/model.ts`` too if present.
* ``large_files``: ``large_files.yml`` entries have ``path``, an http(s) ``url``, an md5 ``hash_val`` and
  ``hash_type: md5``; a listed file that is present must match its md5.
* ``no_weights_in_git``: inside a git work tree, no tracked file of the bundle is a weight file or larger than 10 MB.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["METADATA_SCHEMA", "CheckResult", "run_checks", "main"]

# Required by mb_specification.rst (plus the zoo's name/changelog conventions); input "image", output "pred".
_TENSOR_FORMAT = {
    "type": "object",
    "required": ["type", "format", "num_channels", "spatial_shape", "dtype", "value_range"],
    "properties": {
        "type": {"type": "string"},
        "format": {"type": "string"},
        "num_channels": {"type": "integer", "minimum": 1},
        "spatial_shape": {"type": "array", "minItems": 1},
        "dtype": {"type": "string"},
        "value_range": {"type": "array"},
        "channel_def": {"type": "object"},
    },
}
METADATA_SCHEMA = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "CoopSeg offline reconstruction of the MONAI bundle metadata requirements",
    "type": "object",
    "required": [
        "schema",
        "version",
        "changelog",
        "monai_version",
        "pytorch_version",
        "numpy_version",
        "task",
        "description",
        "authors",
        "copyright",
        "network_data_format",
        "name",
    ],  # fmt: skip
    "properties": {
        "version": {"type": "string", "pattern": r"^\d+\.\d+\.\d+$"},
        "changelog": {"type": "object", "minProperties": 1},
        "monai_version": {"type": "string"},
        "pytorch_version": {"type": "string"},
        "numpy_version": {"type": "string"},
        "required_packages_version": {"type": "object"},
        "optional_packages_version": {"type": "object"},
        "task": {"type": "string", "minLength": 1},
        "description": {"type": "string", "minLength": 1},
        "authors": {"type": "string", "minLength": 1},
        "copyright": {"type": "string", "minLength": 1},
        "network_data_format": {
            "type": "object",
            "required": ["inputs", "outputs"],
            "properties": {
                "inputs": {"type": "object", "required": ["image"], "properties": {"image": _TENSOR_FORMAT}},
                "outputs": {"type": "object", "required": ["pred"], "properties": {"pred": _TENSOR_FORMAT}},
            },
        },
    },
    "anyOf": [{"required": ["required_packages_version"]}, {"required": ["optional_packages_version"]}],
}
WEIGHT_SUFFIXES = (".pt", ".pth", ".ts", ".onnx", ".ckpt", ".safetensors", ".bin")
MAX_TRACKED_BYTES = 10 * 1024 * 1024


@dataclass
class CheckResult:
    """One check: its name, whether it passed, and what was found."""

    name: str
    ok: bool
    detail: str


def version_key(version: str) -> tuple[int, ...]:
    """``"0.10.2" -> (0, 10, 2)``; raises ``ValueError`` for anything but dot-separated integers."""
    if not re.fullmatch(r"\d+(\.\d+)*", version):
        raise ValueError(f"version {version!r} is not of the form MAJOR.MINOR.PATCH")
    return tuple(int(p) for p in version.split("."))


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_files(root: Path) -> str:
    required = ["configs/metadata.json", "LICENSE", "models/model.pt", "configs/inference.json"]
    missing = [f for f in required if not (root / f).is_file()]
    if missing:
        raise AssertionError(f"missing {missing} in {root}")
    return "configs/metadata.json, LICENSE, models/model.pt, configs/inference.json present"


def _check_version(root: Path) -> str:
    meta = json.loads((root / "configs/metadata.json").read_text())
    version, changelog = meta.get("version"), meta.get("changelog") or {}
    if version not in changelog:
        raise AssertionError(f"version {version!r} is not a key of changelog {sorted(changelog)}")
    newest = max(changelog, key=version_key)
    if newest != version:
        raise AssertionError(f"version {version} is not the newest changelog entry ({newest})")
    return f"version {version} is the newest changelog entry"


def _check_metadata(root: Path) -> str:
    from monai.bundle import verify_metadata

    with tempfile.TemporaryDirectory() as tmp:
        schema = Path(tmp) / "schema.json"
        schema.write_text(json.dumps(METADATA_SCHEMA))  # present, so verify_metadata does not download
        verify_metadata(meta_file=str(root / "configs/metadata.json"), filepath=str(schema))
    return "verify_metadata passed against the offline schema (required fields, image/pred formats)"


def _check_properties(root: Path) -> str:
    from monai.bundle import ConfigParser
    from monai.bundle.properties import InferProperties, TrainProperties
    from monai.utils import BundlePropertyConfig

    checked = []
    for config, table in (("inference.json", InferProperties), ("train.json", TrainProperties)):
        path = root / "configs" / config
        if not path.is_file():
            continue
        parser = ConfigParser()
        parser.read_config(str(path))
        missing = [n for n, p in table.items() if p.get("required") and p[BundlePropertyConfig.ID] not in parser]
        if missing:
            raise AssertionError(f"{config} lacks required properties {missing}")
        checked.append(config)
    return f"required property ids present in {', '.join(checked)}"


def _eager_network(root: Path) -> torch.nn.Module:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(root / "configs/inference.json"))
    parser["bundle_root"] = str(root)
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(root / "models/model.pt", map_location="cpu", weights_only=True))
    return net.eval()


def _check_net_in_out(root: Path) -> str:
    from monai.bundle import verify_net_in_out

    verify_net_in_out(
        net_id="network_def",
        meta_file=str(root / "configs/metadata.json"),
        config_file=str(root / "configs/inference.json"),
        device="cpu",
        n=4,
    )
    return "verify_net_in_out(network_def) passed"


def _check_torchscript(root: Path) -> str:
    from monai.bundle import ckpt_export

    net = _eager_network(root)
    x = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = net(x)
    found = []
    with tempfile.TemporaryDirectory() as tmp:
        exported = Path(tmp) / "verify_model.ts"
        ckpt_export(
            net_id="network_def",
            filepath=str(exported),
            ckpt_file=str(root / "models/model.pt"),
            meta_file=str(root / "configs/metadata.json"),
            config_file=str(root / "configs/inference.json"),
        )
        candidates = [exported] + ([root / "models/model.ts"] if (root / "models/model.ts").is_file() else [])
        for path in candidates:
            scripted = torch.jit.load(str(path), map_location="cpu").eval()
            with torch.no_grad():
                torch.testing.assert_close(scripted(x), expected, rtol=1e-4, atol=1e-4)
            found.append("models/model.ts" if path.parent != exported.parent else "ckpt_export of models/model.pt")
    return f"{' and '.join(found)}: TorchScript equals the eager network"


def _check_large_files(root: Path) -> str:
    import yaml

    path = root / "large_files.yml"
    if not path.is_file():
        raise AssertionError(f"no large_files.yml in {root}")
    content = yaml.safe_load(path.read_text()) or {}
    entries = content.get("large_files")
    if not isinstance(entries, list) or not entries:
        raise AssertionError("large_files.yml has no non-empty 'large_files' list")
    problems, matched = [], []
    for i, entry in enumerate(entries):
        name = entry.get("path", f"entry {i}")
        if not str(entry.get("url", "")).startswith(("http://", "https://")):
            problems.append(f"{name}: url {entry.get('url')!r} is not an http(s) URL")
        if entry.get("hash_type") != "md5" or not re.fullmatch(r"[0-9a-f]{32}", str(entry.get("hash_val", ""))):
            problems.append(f"{name}: needs hash_type md5 and a 32-digit hash_val")
        local = root / str(entry.get("path", ""))
        if entry.get("path") and local.is_file():
            if _md5(local) != entry.get("hash_val"):
                problems.append(f"{name}: md5 {_md5(local)} differs from hash_val {entry.get('hash_val')}")
            else:
                matched.append(name)
    if problems:
        raise AssertionError("; ".join(problems))
    return f"{len(entries)} entries with url and md5; md5 matches for {matched or 'no local file'}"


def _check_no_weights_in_git(root: Path) -> str:
    inside = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "--is-inside-work-tree"], capture_output=True, text=True
    )
    if inside.returncode != 0 or inside.stdout.strip() != "true":
        return "not a git work tree (release archive): nothing tracked"
    tracked = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "."], capture_output=True, check=True).stdout
    files = [root / f for f in tracked.decode().split("\0") if f]
    bad = [
        str(f) for f in files if f.suffix in WEIGHT_SUFFIXES or (f.is_file() and f.stat().st_size > MAX_TRACKED_BYTES)
    ]
    if bad:
        raise AssertionError(f"weights or files over 10 MB tracked by git: {bad}")
    return f"{len(files)} tracked files, no weights"


CHECKS: dict[str, Callable[[Path], str]] = {
    "files": _check_files,
    "version": _check_version,
    "metadata": _check_metadata,
    "properties": _check_properties,
    "net_in_out": _check_net_in_out,
    "torchscript": _check_torchscript,
    "large_files": _check_large_files,
    "no_weights_in_git": _check_no_weights_in_git,
}


def run_checks(bundle_dir: str | Path, names: list[str] | None = None) -> list[CheckResult]:
    """Run the checks (all, or ``names``) on ``bundle_dir``; never raises for a failing check."""
    root = Path(bundle_dir).resolve()
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))  # the bundle's own `scripts` package, as ConfigWorkflow.run() does
    results = []
    for name in names or list(CHECKS):
        try:
            results.append(CheckResult(name, True, CHECKS[name](root)))
        except Exception as e:  # a check failing is a result, not a crash
            results.append(CheckResult(name, False, f"{type(e).__name__}: {e}"))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle_dir", help="the bundle folder (holding configs/, scripts/, models/)")
    parser.add_argument("--checks", nargs="*", choices=list(CHECKS), help="run only these checks")
    args = parser.parse_args(argv)
    results = run_checks(args.bundle_dir, args.checks)
    for r in results:
        print(f"[{'PASS' if r.ok else 'FAIL'}] {r.name:<18} {r.detail}")
    failed = [r.name for r in results if not r.ok]
    print(
        f"zoo checks on {args.bundle_dir}: "
        + (f"{len(failed)} of {len(results)} FAILED {failed}" if failed else f"all {len(results)} passed")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
