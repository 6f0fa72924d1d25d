"""ACDC-C generation: the reference's TorchIO arguments, determinism given the seed, labels and geometry kept."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from scripts.data.artefacts import ARTEFACTS, artefact_transform, corrupt_volume, generate_acdc_c, minmax_per_slice
from scripts.data.errors import DatasetError

SHAPE = (20, 18, 3)
AFFINE = np.array([[1.5, 0, 0.2, -4.0], [0, 1.5, 0, 8.0], [0, 0, 9.0, 1.0], [0, 0, 0, 1]])


@pytest.fixture(scope="module")
def acdc_like(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two 'test subjects' (ED, ES) in the layout scripts.data.acdc writes."""
    root = tmp_path_factory.mktemp("acdc")
    rng = np.random.default_rng(0)
    entries = []
    for subject in ("007", "008"):
        for frame in ("ED", "ES"):
            yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
            disk = ((yy - 9) ** 2 + (xx - 8) ** 2 < 20)[..., None].repeat(SHAPE[2], -1)
            image = (200.0 * disk + rng.normal(50, 5, SHAPE)).astype(np.float32)
            label = disk.astype(np.uint8)
            (root / subject).mkdir(exist_ok=True)
            nib.save(nib.Nifti1Image(image, AFFINE), str(root / subject / f"{frame}_img.nii.gz"))
            nib.save(nib.Nifti1Image(label, AFFINE), str(root / subject / f"{frame}_seg.nii.gz"))
            entries.append({"image": f"{subject}/{frame}_img.nii.gz", "label": f"{subject}/{frame}_seg.nii.gz",
                            "subject": f"patient{subject}", "frame": frame})  # fmt: skip
    (root / "datalist.json").write_text(json.dumps({"training": [], "test": entries}))
    return root


def _arrays(out: Path) -> dict[str, np.ndarray]:
    return {str(p.relative_to(out)): np.asarray(nib.load(str(p)).dataobj) for p in sorted(out.rglob("*.nii.gz"))}


def test_reference_arguments() -> None:
    bias = artefact_transform("RandomBias")
    assert bias.order == 3 and tuple(bias.coefficients_range) == (-0.5, 0.5)
    ghost = artefact_transform("RandomGhosting")
    assert (
        tuple(ghost.restore) == (0.02, 0.02)
        and tuple(ghost.num_ghosts_range) == (4, 10)
        and tuple(ghost.axes) == (0, 1, 2)
    )
    motion = artefact_transform("RandomMotion")
    assert tuple(motion.degrees_range) == (-30, 30) and tuple(motion.translation_range) == (-10, 10)
    assert motion.num_transforms == 2
    spike = artefact_transform("RandomSpike")
    assert tuple(spike.num_spikes_range) == (0, 1) and tuple(spike.intensity_range) == (1, 3)
    with pytest.raises(ValueError, match="unknown artefact 'RandomBlur'"):
        artefact_transform("RandomBlur")


def test_corrupt_volume_is_seeded_and_leaves_the_global_rng_alone() -> None:
    image = np.random.default_rng(1).random(SHAPE).astype(np.float32) * 300
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    for artefact in ARTEFACTS:
        outputs = [corrupt_volume(image, artefact, seed=s) for s in range(4)]
        again = corrupt_volume(image, artefact, seed=0)
        assert outputs[0].shape == SHAPE and outputs[0].dtype == np.float32
        np.testing.assert_array_equal(outputs[0], again)
        assert any(not np.array_equal(outputs[0], o) for o in outputs[1:]), f"{artefact}: seeds gave the same volume"
        clean = minmax_per_slice(image)
        assert any(not np.allclose(o, clean, atol=1e-3) for o in outputs), f"{artefact} changed nothing"
        for o in outputs:  # per-slice min-max after the artefact, as the reference
            np.testing.assert_allclose(o.min(axis=(0, 1)), 0.0, atol=1e-6)
            np.testing.assert_allclose(o.max(axis=(0, 1)), 1.0, atol=1e-6)
    torch.testing.assert_close(torch.rand(3), expected_next)


def test_acdc_c_is_deterministic_given_its_seed(acdc_like: Path, tmp_path: Path) -> None:
    first = generate_acdc_c(acdc_like / "datalist.json", tmp_path / "a", seed=0, n_copies=3)
    generate_acdc_c(acdc_like / "datalist.json", tmp_path / "b", seed=0, n_copies=3)
    generate_acdc_c(acdc_like / "datalist.json", tmp_path / "c", seed=1, n_copies=3)
    a, b, c = _arrays(tmp_path / "a"), _arrays(tmp_path / "b"), _arrays(tmp_path / "c")
    assert a.keys() == b.keys() == c.keys() and len(a) == 4 * 2 * 2 * 3 * 2  # artefacts x subjects x frames x copies
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    differs = {k: not np.array_equal(a[k], c[k]) for k in a if "_img" in k}
    assert all(v for k, v in differs.items() if "RandomSpike" not in k), "seed 1 repeated seed 0"
    assert any(v for k, v in differs.items() if "RandomSpike" in k)  # (a draw of no spike repeats the clean slice)
    # copies differ from each other; subset generation gives the same volumes (seeds depend on names only)
    assert not np.array_equal(
        a["RandomMotion/patient007_0/ED_img.nii.gz"], a["RandomMotion/patient007_1/ED_img.nii.gz"]
    )
    generate_acdc_c(acdc_like / "datalist.json", tmp_path / "d", seed=0, n_copies=1, artefacts=["RandomSpike"])
    d = _arrays(tmp_path / "d")
    np.testing.assert_array_equal(
        d["RandomSpike/patient008_0/ES_img.nii.gz"], a["RandomSpike/patient008_0/ES_img.nii.gz"]
    )

    content = json.loads(first.read_text())
    assert {k: len(content[k]) for k in ARTEFACTS} == dict.fromkeys(ARTEFACTS, 12) and len(content["test"]) == 48
    entry = content["RandomGhosting"][0]
    assert entry["subject"] == "patient007_0" and entry["source_subject"] == "patient007" and entry["copy"] == 0
    # labels kept byte for byte, images keep the source geometry
    for e in content["test"]:
        source = acdc_like / f"{e['source_subject'][-3:]}" / f"{e['frame']}_seg.nii.gz"
        assert (tmp_path / "a" / e["label"]).read_bytes() == source.read_bytes()
        img = nib.load(str(tmp_path / "a" / e["image"]))
        np.testing.assert_allclose(img.affine, AFFINE)
        assert img.shape == SHAPE


def test_missing_source_names_the_file(acdc_like: Path, tmp_path: Path) -> None:
    content = json.loads((acdc_like / "datalist.json").read_text())
    content["test"][1]["image"] = "007/gone.nii.gz"
    bad = tmp_path / "datalist.json"
    bad.write_text(json.dumps(content))
    with pytest.raises(DatasetError, match=r"entry 1 of 'test' points at a missing file .*007/gone.nii.gz"):
        generate_acdc_c(bad, tmp_path / "out", base_dir=acdc_like)
    with pytest.raises(DatasetError, match="no non-empty 'validation' list"):
        generate_acdc_c(acdc_like / "datalist.json", tmp_path / "out", key="validation")
