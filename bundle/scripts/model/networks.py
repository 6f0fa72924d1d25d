"""Networks of the cooperative training framework (Chen et al., MICCAI 2021), reference variant 'FCN_16_standard'.

Fast-thinking network (FTN): ``image_encoder`` (encoder plus latent decoupler H) -> ``segmentation_decoder`` reads
z_shape = H(z_image); ``image_decoder`` reads z_image and reconstructs the image. Slow-thinking network (STN): a
denoising shape autoencoder, ``shape_encoder`` + ``shape_decoder``, that refines softmax(logits / T) or a one-hot label.

Conventions: tensors are ``B, C, H, W``; images lie in [0, 1]; logits have ``num_classes`` channels with label codes
0 background, 1 LV, 2 MYO, 3 RV. The latent codes have ``8 * width`` channels at ``H/16 x W/16``, so H and W must be
divisible by 16. At the default ``width=16`` every part has exactly the reference's trainable parameter count
(image encoder 1,125,888, segmentation decoder 161,732, image decoder 248,961, shape encoder 830,640, shape decoder
161,732).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..labels import NUM_CLASSES

__all__ = [
    "ResidualDown",
    "ResidualUp",
    "Encoder",
    "Decoder",
    "DualBranchEncoder",
    "CoopSegNet",
    "init_reference_weights",
]

_SLOPE = 0.2


def _conv_bn_pair(in_channels: int, out_channels: int) -> nn.Sequential:
    """Conv3x3-BN-LReLU-Conv3x3-BN: the residual branch shared by every block."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1),
        nn.BatchNorm2d(out_channels),
        nn.LeakyReLU(_SLOPE),
        nn.Conv2d(out_channels, out_channels, 3, padding=1),
        nn.BatchNorm2d(out_channels),
    )


class _ResidualBlock(nn.Module):
    """``resample``, then ``LReLU(Conv1x1(x) + branch(x))``: a residual block with a 1x1 projection shortcut."""

    def __init__(self, resample: nn.Module, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.resample = resample
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1)
        self.branch = _conv_bn_pair(in_channels, out_channels)
        self.act = nn.LeakyReLU(_SLOPE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.resample(x)
        return self.act(self.shortcut(x) + self.branch(x))


class ResidualDown(_ResidualBlock):
    """Stride-2 conv (no norm), then the residual body. ``B, Cin, H, W -> B, Cout, H/2, W/2``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(nn.Conv2d(in_channels, in_channels, 3, stride=2, padding=1), in_channels, out_channels)


class ResidualUp(_ResidualBlock):
    """x2 upsampling, then the residual body. ``B, Cin, H, W -> B, Cout, 2H, 2W``.

    ``up_type="nearest"`` is parameter-free nearest-neighbour upsampling (no conv after it, as in the reference);
    ``up_type="transpose"`` is ``ConvTranspose2d(Cin, Cin, 2, stride 2)``.
    """

    def __init__(self, in_channels: int, out_channels: int, up_type: str = "nearest") -> None:
        if up_type == "nearest":
            up: nn.Module = nn.Upsample(scale_factor=2, mode="nearest")
        elif up_type == "transpose":
            up = nn.ConvTranspose2d(in_channels, in_channels, 2, stride=2)
        else:
            raise ValueError(f"up_type must be 'nearest' or 'transpose', got {up_type!r}.")
        super().__init__(up, in_channels, out_channels)


class Encoder(nn.Module):
    """Four residual down blocks and a 1x1 projection: ``B, Cin, H, W -> B, 8w, H/16, W/16`` (non-negative, ReLU)."""

    def __init__(self, in_channels: int, width: int = 16) -> None:
        super().__init__()
        w = width
        self.inc = _conv_bn_pair(in_channels, w)
        self.down1 = ResidualDown(w, 2 * w)
        self.down2 = ResidualDown(2 * w, 4 * w)
        self.down3 = ResidualDown(4 * w, 8 * w)
        self.down4 = ResidualDown(8 * w, 8 * w)
        self.final_conv = nn.Sequential(nn.Conv2d(8 * w, 8 * w, 1), nn.BatchNorm2d(8 * w))
        self.inc_act = nn.LeakyReLU(_SLOPE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inc_act(self.inc(x))
        x = self.down4(self.down3(self.down2(self.down1(x))))
        return torch.relu(self.final_conv(x))


class Decoder(nn.Module):
    """Four residual up blocks and a 1x1 output conv: ``B, 8w, h, w -> B, Cout, 16h, 16w``.

    No skip connections: the decoder sees only the latent code. ``sigmoid_output`` maps to (0, 1) (image decoder);
    otherwise the output is raw logits.
    """

    def __init__(self, out_channels: int, width: int = 16, up_type: str = "nearest", sigmoid_output: bool = False):
        super().__init__()
        w = width
        self.up1 = ResidualUp(8 * w, 4 * w, up_type)
        self.up2 = ResidualUp(4 * w, 2 * w, up_type)
        self.up3 = ResidualUp(2 * w, w, up_type)
        self.up4 = ResidualUp(w, w, up_type)
        self.final_conv = nn.Conv2d(w, out_channels, 1)
        self.sigmoid_output = sigmoid_output

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = self.final_conv(self.up4(self.up3(self.up2(self.up1(z)))))
        return torch.sigmoid(out) if self.sigmoid_output else out


class DualBranchEncoder(nn.Module):
    """FTN image encoder: ``x (B, Cin, H, W) -> (z_image, z_shape)``, both ``B, 8w, H/16, W/16`` and non-negative.

    ``z_shape = H(z_image)``, where the latent decoupler H is Conv3x3-BN-LReLU-Conv3x3-BN-ReLU.
    """

    def __init__(self, in_channels: int = 1, width: int = 16) -> None:
        super().__init__()
        c = 8 * width
        self.general_encoder = Encoder(in_channels, width)
        self.code_decoupler = nn.Sequential(_conv_bn_pair(c, c), nn.ReLU())

    def filter_code(self, z_image: torch.Tensor) -> torch.Tensor:
        """The latent decoupler H: z_image -> z_shape."""
        return self.code_decoupler(z_image)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z_image = self.general_encoder(x)
        return z_image, self.filter_code(z_image)


def init_reference_weights(module: nn.Module) -> None:
    """The reference initialisation (docs/method.md section 1.3).

    Conv2d weights: Kaiming normal (fan_in, a=0); Conv2d biases keep PyTorch's default; ConvTranspose2d keeps
    PyTorch's default entirely; BatchNorm: gamma ~ N(1, 0.02), beta = 0. Decoder output-conv biases are zeroed by
    the caller (:class:`CoopSegNet`).
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, a=0, mode="fan_in")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class CoopSegNet(nn.Module):
    """FTN + STN in one module, the bundle's ``network_def``.

    ``forward(image)`` maps ``B, in_channels, H, W`` images in [0, 1] (H, W divisible by 16) to one logits tensor
    ``B, num_classes, H, W``: STN(FTN(x)) when ``refine=True`` (default, the paper's final prediction), else FTN(x).
    The flat state dict holds all five parts (``image_encoder.*``, ``segmentation_decoder.*``, ``image_decoder.*``,
    ``shape_encoder.*``, ``shape_decoder.*``), so one ``model.pt`` serves inference, fine-tuning and export.

    Args:
        in_channels: image channels (1 for cine MR).
        num_classes: segmentation classes including background (default: the bundle's labels).
        width: channels of the first block; the latent code has ``8 * width`` channels (reference: 16).
        temperature: T in softmax(logits / T), the STN's view of a prediction (reference: 2).
        refine: whether ``forward`` returns the STN-refined logits.
        n_refinements: how many times the STN is applied when refining (reference ``n_iter - 1``; default 1).
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = NUM_CLASSES,
        width: int = 16,
        temperature: float = 2.0,
        refine: bool = True,
        n_refinements: int = 1,
    ) -> None:
        super().__init__()
        if in_channels < 1 or num_classes < 2 or width < 1:
            raise ValueError(
                f"need in_channels >= 1, num_classes >= 2 and width >= 1, got {in_channels}, {num_classes}, {width}."
            )
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}.")
        if n_refinements < 1:
            raise ValueError(f"n_refinements must be >= 1, got {n_refinements}.")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.temperature = float(temperature)
        self.refine = refine
        self.n_refinements = n_refinements
        self.image_encoder = DualBranchEncoder(in_channels, width)
        self.segmentation_decoder = Decoder(num_classes, width, up_type="nearest")
        self.image_decoder = Decoder(in_channels, width, up_type="transpose", sigmoid_output=True)
        self.shape_encoder = Encoder(num_classes, width)
        self.shape_decoder = Decoder(num_classes, width, up_type="nearest")
        init_reference_weights(self)
        for decoder in (self.segmentation_decoder, self.image_decoder, self.shape_decoder):
            nn.init.zeros_(decoder.final_conv.bias)

    # FTN -------------------------------------------------------------------------------------------------------
    def encode(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``B, Cin, H, W -> (z_image, z_shape)``, each ``B, 8w, H/16, W/16``."""
        return self.image_encoder(image)

    def segment(self, image: torch.Tensor) -> torch.Tensor:
        """FTN segmentation logits ``B, K, H, W``."""
        return self.segmentation_decoder(self.image_encoder(image)[1])

    # STN -------------------------------------------------------------------------------------------------------
    def shape_input(self, logits: torch.Tensor) -> torch.Tensor:
        """The STN's view of a prediction: softmax(logits / T) over the class axis."""
        return torch.softmax(logits / self.temperature, dim=1)

    def reconstruct_shape(self, shape: torch.Tensor) -> torch.Tensor:
        """STN: a ``B, K, H, W`` probability or one-hot map -> refined logits ``B, K, H, W``."""
        return self.shape_decoder(self.shape_encoder(shape))

    def refine_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Apply the STN ``n_refinements`` times to logits (reference ``predict(n_iter=1 + n_refinements)``)."""
        for _ in range(self.n_refinements):
            logits = self.reconstruct_shape(self.shape_input(logits))
        return logits

    def predict_both(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(refined_logits, ftn_logits)`` from one FTN pass; for validation that logs both."""
        ftn_logits = self.segment(image)
        return self.refine_logits(ftn_logits), ftn_logits

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        ftn_logits = self.segment(image)
        if self.refine:
            return self.refine_logits(ftn_logits)
        return ftn_logits

    # parts -------------------------------------------------------------------------------------------------------
    def parts(self) -> dict[str, nn.Module]:
        """The five reference modules by their reference names."""
        return {
            "image_encoder": self.image_encoder,
            "segmentation_decoder": self.segmentation_decoder,
            "image_decoder": self.image_decoder,
            "shape_encoder": self.shape_encoder,
            "shape_decoder": self.shape_decoder,
        }
