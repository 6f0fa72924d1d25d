"""Architecture of the FTN and STN: the reference's parameter counts, latent shapes and the network_def contract."""

from __future__ import annotations

import pytest
import torch

from scripts.model.networks import CoopSegNet

REFERENCE_COUNTS = {
    "image_encoder": 1_125_888,
    "segmentation_decoder": 161_732,
    "image_decoder": 248_961,
    "shape_encoder": 830_640,
    "shape_decoder": 161_732,
}


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def test_parameter_counts_match_reference() -> None:
    net = CoopSegNet()
    assert {name: _count(part) for name, part in net.parts().items()} == REFERENCE_COUNTS
    assert _count(net.image_encoder.code_decoupler) == 295_680
    assert _count(net) == 2_528_953


@pytest.mark.parametrize("size,latent", [(192, 12), (224, 14)])
def test_latent_and_output_shapes(size: int, latent: int) -> None:
    net = CoopSegNet().eval()
    x = torch.rand(2, 1, size, size)
    with torch.no_grad():
        z_image, z_shape = net.encode(x)
        assert z_image.shape == z_shape.shape == (2, 128, latent, latent)
        assert z_image.min() >= 0 and z_shape.min() >= 0  # both codes end in a ReLU
        assert net.shape_encoder(torch.rand(2, 4, size, size)).shape == (2, 128, latent, latent)
        recon = net.image_decoder(z_image)
        assert recon.shape == x.shape and recon.min() > 0 and recon.max() < 1
        assert net(x).shape == (2, 4, size, size)


def test_segmentation_decoder_reads_decoupled_code() -> None:
    net = CoopSegNet().eval()
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        z_image, z_shape = net.encode(x)
        torch.testing.assert_close(z_shape, net.image_encoder.filter_code(z_image))
        torch.testing.assert_close(net.segment(x), net.segmentation_decoder(z_shape))
        assert not torch.allclose(net.segment(x), net.segmentation_decoder(z_image))


def test_forward_refines_with_stn_unless_disabled() -> None:
    net = CoopSegNet().eval()
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        ftn = net.segment(x)
        refined = net.shape_decoder(net.shape_encoder(torch.softmax(ftn / 2.0, dim=1)))
        torch.testing.assert_close(net(x), refined)
        net.refine = False
        torch.testing.assert_close(net(x), ftn)
        both = net.predict_both(x)
        torch.testing.assert_close(both[0], refined)
        torch.testing.assert_close(both[1], ftn)


def test_width_classes_channels_are_parameters() -> None:
    net = CoopSegNet(in_channels=2, num_classes=3, width=8)
    out = net.eval()(torch.rand(1, 2, 32, 32))
    assert out.shape == (1, 3, 32, 32)
    assert net.encode(torch.rand(1, 2, 32, 32))[0].shape == (1, 64, 2, 2)
    assert net.image_decoder(torch.rand(1, 64, 2, 2)).shape == (1, 2, 32, 32)
    with pytest.raises(ValueError, match="num_classes"):
        CoopSegNet(num_classes=1)
    with pytest.raises(ValueError, match="temperature"):
        CoopSegNet(temperature=0)


def test_flat_state_dict_holds_all_five_parts() -> None:
    state = CoopSegNet().state_dict()
    assert {k.split(".")[0] for k in state} == set(REFERENCE_COUNTS)
    fresh = CoopSegNet()
    fresh.load_state_dict(state)  # strict


def test_reference_initialisation() -> None:
    torch.manual_seed(0)
    net = CoopSegNet()
    first = net.image_encoder.general_encoder.inc[0]
    assert abs(first.weight.std().item() - (2 / 9) ** 0.5) < 0.1
    bn = net.image_encoder.general_encoder.inc[1]
    assert abs(bn.weight.mean().item() - 1) < 0.02 and bn.bias.abs().max() == 0
    for decoder in (net.segmentation_decoder, net.image_decoder, net.shape_decoder):
        assert decoder.final_conv.bias.abs().max() == 0
