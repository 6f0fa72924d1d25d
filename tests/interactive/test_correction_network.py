"""The learned correction: its inputs, that training teaches it to fix errors the user did not mark, and how the
frame refiner applies it (what the spread changed and every seed stay)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from synthetic import truth_and_image

from conftest import BUNDLE_ROOT
from helpers import phantom_volume, write_nifti
from scripts.interactive.annotator import slice_dice, stroke_along
from scripts.interactive.correction_network import (
    CorrectionNet,
    correct_slice,
    correction_inputs,
    load_correction_network,
)
from scripts.interactive.correction_training import main as training_main
from scripts.interactive.correction_training import simulate_state, train
from scripts.interactive.refinement import RefinementSettings
from scripts.interactive.session import FrameRefiner
from scripts.model.networks import CoopSegNet


def test_inputs_are_padded_to_the_network_and_one_hot() -> None:
    image = np.random.default_rng(0).random((30, 20)).astype(np.float32)
    mask = np.zeros((30, 20), dtype=np.int64)
    mask[5:10, 5:10] = 2
    seeds = np.full((30, 20), -1, dtype=np.int64)
    seeds[7, 7] = 1
    x, m, s = correction_inputs(image, mask, seeds, 4)
    assert x.shape == (1, 1, 32, 32) and m.shape == s.shape == (1, 4, 32, 32)
    np.testing.assert_array_equal(x[0, 0, :30, :20].numpy(), image)
    assert m[0, :, :30, :20].sum(0).eq(1).all() and m[0, :, 30:].sum() == 0  # one class per pixel, none in padding
    assert s.sum() == 1 and s[0, 1, 7, 7] == 1  # an unmarked pixel is no class
    with pytest.raises(ValueError, match="share H, W"):
        correction_inputs(image, mask[:20], seeds, 4)


def _missing_myocardium_and_rv(truth: np.ndarray) -> np.ndarray:
    """A model's mask with two separate mistakes: the myocardium and the RV called background."""
    pred = truth.astype(np.int64).copy()
    pred[(truth == 2) | (truth == 3)] = 0
    return pred


def test_training_teaches_it_to_fix_what_the_user_did_not_mark(tmp_path) -> None:
    samples = []
    for seed in range(6):
        truth, image = truth_and_image(seed=seed)
        samples.append((image, truth.astype(np.int64), _missing_myocardium_and_rv(truth)))
    out = tmp_path / "correction.pt"
    record = train(samples, iterations=50, out=out, batch_size=4, crop=96, log_every=25)
    assert out.is_file() and not (tmp_path / "correction.pt.partial").exists()
    assert record["log"][-1]["pixels_right_after"] > record["log"][-1]["pixels_right_before"]
    network = load_correction_network(out)

    truth, image = truth_and_image(seed=99)  # a slice it has not seen
    pred = _missing_myocardium_and_rv(truth)
    seeds = np.full(truth.shape, -1, dtype=np.int64)
    ring = stroke_along(truth == 2, truth, 2)  # the user marks the myocardium only
    seeds[ring[:, 0], ring[:, 1]] = 2
    corrected = correct_slice(network, image, pred, seeds).argmax(0)
    rv = slice_dice(corrected, truth, labels=(3,))
    assert rv is not None and rv > 0.8, f"the unmarked RV was not restored (Dice {rv})"
    assert slice_dice(corrected, truth) > slice_dice(pred, truth) + 0.4


def test_simulated_state_fixes_earlier_regions_and_marks_the_next() -> None:
    truth, _ = truth_and_image()
    pred = _missing_myocardium_and_rv(truth.astype(np.int64))
    rng = np.random.default_rng(0)
    states = [simulate_state(pred, truth.astype(np.int64), rng) for _ in range(20)]
    for mask, seeds in states:
        marked = seeds >= 0
        assert marked.any() and np.all(seeds[marked] == truth[marked])  # scribbles lie on their true label
        assert np.all((mask == pred) | (mask == truth))  # earlier corrections set pixels right, nothing else
    assert any((mask != pred).any() for mask, _ in states)  # some states carry earlier corrections


def test_loading_names_a_missing_or_wrong_file(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="correction_training"):
        load_correction_network(tmp_path / "none.pt")
    torch.save(CoopSegNet().state_dict(), tmp_path / "segmentation.pt")
    with pytest.raises(ValueError, match="not a correction network"):
        load_correction_network(tmp_path / "segmentation.pt")


def test_training_never_overwrites_weights(tmp_path) -> None:
    existing = tmp_path / "correction_net.pt"
    existing.write_bytes(b"keep me")
    with pytest.raises(SystemExit, match="exists"):
        training_main(["--out", str(existing)])
    assert existing.read_bytes() == b"keep me"


@pytest.fixture(scope="module")
def refiner() -> FrameRefiner:
    """A phantom stack through the bundle's preprocessing, fresh segmentation weights."""
    import tempfile
    from pathlib import Path

    image, truth, affine = phantom_volume(seed=3, n_slices=3)
    parser = ConfigParser()
    parser.read_config(str(BUNDLE_ROOT / "configs" / "inference.json"))
    parser["bundle_root"] = str(BUNDLE_ROOT)
    with tempfile.TemporaryDirectory() as tmp:
        path = write_nifti(Path(tmp) / "c.nii.gz", image, affine)
        data = parser.get_parsed_content("preprocessing")({"image": str(path)})
    torch.manual_seed(0)
    return FrameRefiner.from_preprocessed(data["image"], 0, truth.shape, CoopSegNet().eval())


def _background_only() -> CorrectionNet:
    """A correction network that calls every pixel background, whatever it is shown."""
    network = CorrectionNet()
    with torch.no_grad():
        network.keep.zero_()
        final = network.unet.final_conv.conv if hasattr(network.unet.final_conv, "conv") else network.unet.final_conv
        final.weight.zero_()
        final.bias.copy_(torch.tensor([20.0, 0.0, 0.0, 0.0]))
    return network.eval()


def test_learned_refinement_keeps_the_spread_and_every_seed(refiner: FrameRefiner) -> None:
    k = 1
    shape = refiner.native_shape[:2]
    prior = np.zeros(shape, dtype=np.uint8)
    prior[20:60, 20:60] = 2
    seeds = np.full(shape, -1, dtype=np.int16)
    seeds[38:42, 30:50] = 1  # LV marked inside the "myocardium"
    settings = RefinementSettings(method="geodesic")
    spread_only = refiner.with_settings(settings).refine(k, prior, seeds)

    learned = refiner.with_settings(dataclasses.replace(settings, learned=True))
    with pytest.raises(ValueError, match="correction network"):
        learned.refine(k, prior, seeds)
    learned.correction_network = _background_only()
    result = learned.refine(k, prior, seeds)
    spread = spread_only != prior
    assert spread.sum() > (seeds >= 0).sum()  # the spread reached beyond the seeds
    np.testing.assert_array_equal(result[spread], spread_only[spread])  # what the spread changed stays
    np.testing.assert_array_equal(result[seeds >= 0], seeds[seeds >= 0])
    rest = ~spread & (seeds < 0)
    assert (result[rest] == 0).mean() > 0.99  # elsewhere the network decides (here: background)
