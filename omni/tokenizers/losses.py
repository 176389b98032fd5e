"""VQ-GAN training losses: reconstruction, PatchGAN (hinge), and a pluggable perceptual loss.

Nothing here downloads weights. The perceptual loss is LPIPS-VGG only when a local safetensors
file with its weights is given (`LPIPS.from_file`); otherwise a weight-free SSIM loss stands in.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from omni.tokenizers.metrics import ssim


def reconstruction_loss(
    rec: torch.Tensor, target: torch.Tensor, l1: float = 1.0, l2: float = 1.0
) -> torch.Tensor:
    """Weighted L1 + L2 pixel loss."""
    return l1 * F.l1_loss(rec, target) + l2 * F.mse_loss(rec, target)


# ----------------------------------------------------------------------------------------------
# Discriminator


class PatchDiscriminator(nn.Module):
    """PatchGAN (pix2pix / taming) with GroupNorm instead of BatchNorm: one logit per patch."""

    def __init__(self, channels: int = 64, layers: int = 3):
        super().__init__()
        seq: list[nn.Module] = [nn.Conv2d(3, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        c = channels
        for i in range(1, layers + 1):
            out = channels * min(2**i, 8)
            stride = 2 if i < layers else 1
            seq += [
                nn.Conv2d(c, out, 4, stride, 1, bias=False),
                nn.GroupNorm(min(32, out), out),
                nn.LeakyReLU(0.2),
            ]
            c = out
        seq.append(nn.Conv2d(c, 1, 4, 1, 1))
        self.net = nn.Sequential(*seq)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss."""
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


def hinge_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Generator hinge loss."""
    return -fake_logits.mean()


def adaptive_gan_weight(
    rec_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor
) -> torch.Tensor:
    """taming's balance: |grad rec| / |grad gan| at the decoder's last layer, clamped to [0, 1e4]."""
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    return (rec_grad.norm() / (g_grad.norm() + 1e-4)).clamp(0.0, 1e4).detach()


# ----------------------------------------------------------------------------------------------
# Perceptual losses


class SSIMLoss(nn.Module):
    """Weight-free perceptual stand-in: 1 - SSIM (structure and contrast, not just pixels)."""

    def forward(self, rec: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (1.0 - ssim(rec, target)).mean()


class LPIPS(nn.Module):
    """LPIPS with a VGG16 trunk (Zhang et al. 2018), weights only from a local safetensors file.

    The file holds torchvision's `vgg16().features` weights under `vgg.<index>.{weight,bias}`
    and the five non-negative 1x1 heads under `lin.<k>.weight` (shapes (1, C_k, 1, 1)).
    """

    TAPS = (3, 8, 15, 22, 29)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 in vgg16().features
    WIDTHS = (64, 128, 256, 512, 512)

    def __init__(self):
        super().__init__()
        from torchvision.models import vgg16

        self.vgg = vgg16(weights=None).features[: self.TAPS[-1] + 1]
        self.lin = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in self.WIDTHS)
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_file(cls, path: str | Path) -> LPIPS:
        """Load weights strictly; a clear error names the file when it is missing or does not fit."""
        from safetensors.torch import load_file

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"LPIPS weights {path} not found; give a local safetensors file or use "
                f"perceptual='ssim' (nothing is downloaded)"
            )
        try:
            state = load_file(str(path))
        except Exception as e:
            raise ValueError(f"LPIPS weights {path} are unreadable ({e}); re-create the file") from e
        model = cls()
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise ValueError(f"LPIPS weights {path} do not fit the VGG16 LPIPS layout: {e}") from e
        return model

    def forward(self, rec: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        x, y = (rec - self.shift) / self.scale, (target - self.shift) / self.scale
        total = rec.new_zeros(())
        k = 0
        for i, layer in enumerate(self.vgg):
            x, y = layer(x), layer(y)
            if i in self.TAPS:
                fx = x / (x.norm(dim=1, keepdim=True) + 1e-10)
                fy = y / (y.norm(dim=1, keepdim=True) + 1e-10)
                total = total + self.lin[k]((fx - fy) ** 2).mean()
                k += 1
        return total


def make_perceptual(kind: str = "ssim", weights: str | None = None) -> nn.Module | None:
    """`ssim` (weight-free), `lpips` (needs `weights`, a local file) or `none`."""
    if kind == "none":
        return None
    if kind == "ssim":
        return SSIMLoss()
    if kind == "lpips":
        if not weights:
            raise ValueError(
                "perceptual='lpips' needs perceptual_weights=PATH to a local safetensors file; "
                "nothing is downloaded. Use perceptual='ssim' for the weight-free loss"
            )
        return LPIPS.from_file(weights)
    raise ValueError(f"perceptual must be 'ssim', 'lpips' or 'none', got {kind!r}")
