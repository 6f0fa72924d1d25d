"""One cooperative-training iteration's computations (docs/method.md section 4.1), independent of the ignite engine.

``standard_terms`` is the baseline's objective (it is also computed in cooperative training); ``generate_hard_examples``
masks the FTN's latent codes and decodes them into a corrupted image and a corrupted segmentation;
``hard_terms`` trains both networks on them. Tensor conventions are those of :mod:`scripts.engine.losses`.

The gradient-targeted masks need the gradient of a task loss with respect to each code, through its decoder. The
standard pass has already decoded both codes with the same decoders, on the same batch and in the same BatchNorm
mode, so :class:`LatentGradients` takes those gradients from the standard pass instead of decoding again: the image
code's gradient of the reconstruction loss is caught by a hook during the standard backward pass (no extra work), and
the shape code's gradient of the segmentation loss by one backward pass through the segmentation decoder alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from monai.networks.utils import one_hot

from ..model.masking import TARGETED_SCHEMES, LatentMasker
from ..model.networks import CoopSegNet
from ..model.norm_context import frozen_parameters, untracked_batchnorm
from .losses import pixel_cross_entropy, reconstruction_loss

__all__ = [
    "StandardPass",
    "HardExamples",
    "LatentGradients",
    "add_input_noise",
    "standard_terms",
    "generate_hard_examples",
    "hard_terms",
]


@dataclass
class StandardPass:
    """Loss terms of the standard part plus the FTN latent codes (from the noisy input) and logits.

    ``image_code_in`` and ``shape_code_in`` are the codes as the image and segmentation decoders received them (views
    of ``z_image`` and ``z_shape`` that only those decoders read), where :class:`LatentGradients` takes gradients.
    """

    losses: dict[str, torch.Tensor]
    z_image: torch.Tensor
    z_shape: torch.Tensor
    seg_logits: torch.Tensor
    image_code_in: torch.Tensor | None = None
    shape_code_in: torch.Tensor | None = None
    gradients: LatentGradients | None = None


@dataclass
class HardExamples:
    """Detached hard examples: ``hard_image`` ``B, 1, H, W`` in (0, 1), ``hard_seg_logits`` ``B, K, H, W``."""

    hard_image: torch.Tensor
    hard_seg_logits: torch.Tensor
    image_scheme: str
    shape_scheme: str


def add_input_noise(image: torch.Tensor, sigma: float = 0.05) -> torch.Tensor:
    """The FTN's input, ``clamp(x + sigma * N(0, 1), 0, 1)`` (the reference's denoising-autoencoder view)."""
    if sigma <= 0:
        return image
    return (image + sigma * torch.randn_like(image)).clamp(0.0, 1.0)


def standard_terms(
    net: CoopSegNet,
    noisy_image: torch.Tensor,
    clean_image: torch.Tensor,
    label: torch.Tensor,
    separate_training: bool = False,
    recon_weight: float = 0.5,
) -> StandardPass:
    """The four standard terms: ``seg``, ``recon``, ``gt_shape`` and ``shape``.

    ``shape`` is the STN's loss on softmax(FTN logits / T); its gradient reaches the FTN unless ``separate_training``.
    """
    z_image, z_shape = net.image_encoder(noisy_image)
    image_code_in, shape_code_in = z_image.view_as(z_image), z_shape.view_as(z_shape)
    seg_logits = net.segmentation_decoder(shape_code_in)
    stn_view = net.shape_input(seg_logits.detach() if separate_training else seg_logits)
    losses = {
        "seg": pixel_cross_entropy(seg_logits, label),
        "recon": reconstruction_loss(net.image_decoder(image_code_in), clean_image, recon_weight),
        "gt_shape": pixel_cross_entropy(
            net.reconstruct_shape(one_hot(label[:, None], net.num_classes, clean_image.dtype)), label
        ),
        "shape": pixel_cross_entropy(net.reconstruct_shape(stn_view), label),
    }
    return StandardPass(losses, z_image, z_shape, seg_logits, image_code_in, shape_code_in)


class LatentGradients:
    """The targeted masks' gradients, taken from the standard pass (see the module docstring).

    Create it after the standard forward pass and before its backward pass; after the backward pass, ``image`` holds
    the reconstruction loss's gradient with respect to z_image (half the plain MSE's, from ``recon_weight`` 0.5: a
    positive factor, so the same ranking and mask) and ``shape`` the segmentation loss's gradient with respect to
    z_shape, each only when its scheme is targeted (else None).

    Args:
        std: the standard pass.
        image_scheme, shape_scheme: the masking schemes drawn for this iteration.
    """

    def __init__(self, std: StandardPass, image_scheme: str | None, shape_scheme: str | None) -> None:
        self.image: torch.Tensor | None = None
        self.shape: torch.Tensor | None = None
        if image_scheme in TARGETED_SCHEMES:
            std.image_code_in.register_hook(self._keep_image)
        if shape_scheme in TARGETED_SCHEMES:
            (grad,) = torch.autograd.grad(std.losses["seg"], std.shape_code_in, retain_graph=True)
            self.shape = grad.detach()

    def _keep_image(self, grad: torch.Tensor) -> None:
        self.image = grad.detach()


@torch.no_grad()
def _decode(decoder: torch.nn.Module, code: torch.Tensor) -> torch.Tensor:
    # Reference `decoder_inference(..., eval=False, disable_track_bn_stats=True)`: train-mode BN on the masked batch,
    # running statistics untouched, no gradient.
    with frozen_parameters(decoder), untracked_batchnorm(decoder):
        return decoder(code)


def generate_hard_examples(
    net: CoopSegNet,
    z_image: torch.Tensor,
    z_shape: torch.Tensor,
    clean_image: torch.Tensor,
    label: torch.Tensor,
    image_masker: LatentMasker | None,
    shape_masker: LatentMasker | None,
    image_scheme: str | None = None,
    shape_scheme: str | None = None,
    gradients: LatentGradients | None = None,
) -> HardExamples:
    """Mask z_image (targeted by MSE against the clean image) and z_shape (by pixel CE against the label).

    The masked codes are decoded by the frozen image and segmentation decoders. A masker of None leaves its code
    unmasked (the hard example is then the plain reconstruction or segmentation, still detached). Schemes are drawn
    by the maskers unless given; ``gradients`` from the standard pass replace the maskers' own gradient passes.
    """
    z_image, z_shape = z_image.detach(), z_shape.detach()
    image_grad = gradients.image if gradients is not None else None
    shape_grad = gradients.shape if gradients is not None else None
    if image_masker is not None:
        z_image, image_scheme = image_masker(
            z_image, net.image_decoder, clean_image, torch.nn.functional.mse_loss, image_scheme, image_grad
        )
    if shape_masker is not None:
        z_shape, shape_scheme = shape_masker(
            z_shape, net.segmentation_decoder, label, pixel_cross_entropy, shape_scheme, shape_grad
        )
    return HardExamples(
        hard_image=_decode(net.image_decoder, z_image),
        hard_seg_logits=_decode(net.segmentation_decoder, z_shape),
        image_scheme=image_scheme or "none",
        shape_scheme=shape_scheme or "none",
    )


def hard_terms(
    net: CoopSegNet,
    hard: HardExamples,
    clean_image: torch.Tensor,
    label: torch.Tensor,
    separate_training: bool = False,
    recon_weight: float = 0.5,
    reference_bn: bool = True,
    train_stn: bool = True,
) -> dict[str, torch.Tensor]:
    """The four hard terms: ``hard_seg``, ``hard_recon``, ``hard_shape`` and ``hard_corrupted_shape``.

    BatchNorm, as in the reference (``reference_bn=True``): the image encoder, segmentation decoder and STN use batch
    statistics without tracking them, and their BN gamma/beta get no gradient from these terms; the image decoder's
    BN is tracked and trained as usual [quirk]. With ``reference_bn=False`` all five parts use untracked batch
    statistics here and all BN affine parameters are trained.

    ``train_stn=False`` (an ablation; the reference trains the STN here): the STN's parameters get no gradient from
    these terms, so it learns from the standard terms only; ``hard_shape`` still trains the FTN through the STN, and
    ``hard_corrupted_shape`` (the STN alone on a corrupted segmentation) then trains nothing.
    """
    ftn_stn = (net.image_encoder, net.segmentation_decoder, net.shape_encoder, net.shape_decoder)
    stn = () if train_stn else (net.shape_encoder, net.shape_decoder)
    with untracked_batchnorm(*ftn_stn, freeze_affine=reference_bn):
        z_image, z_shape = net.image_encoder(hard.hard_image)
        seg_logits = net.segmentation_decoder(z_shape)
        stn_view = net.shape_input(seg_logits.detach() if separate_training else seg_logits)
        with frozen_parameters(*stn):
            losses = {
                "hard_seg": pixel_cross_entropy(seg_logits, label),
                "hard_shape": pixel_cross_entropy(net.reconstruct_shape(stn_view), label),
                "hard_corrupted_shape": pixel_cross_entropy(
                    net.reconstruct_shape(net.shape_input(hard.hard_seg_logits)), label
                ),
            }
    image_decoder_bn = () if reference_bn else (net.image_decoder,)
    with untracked_batchnorm(*image_decoder_bn):
        losses["hard_recon"] = reconstruction_loss(net.image_decoder(z_image), clean_image, recon_weight)
    return losses
