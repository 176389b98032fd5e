"""The VQ-GAN image tokenizer: encoder -> quantizer -> decoder.

    vq = VQModel(VQConfig.from_name("shapes-32"))
    codes = vq.encode(images)      # images (B, 3, H, W) in [-1, 1] -> (B, h*w) int64
    images = vq.decode(codes)      # -> (B, 3, H, W) in [-1, 1] (unclamped)

Two architectures, chosen per scale by measurement:

* `patch` (32 px on a CPU): a stride-f patchify convolution, residual 1x1 MLP blocks and (with
  `patch_context`) one 3x3 block for context; the decoder mirrors it and ends in a pixel
  shuffle. Cheap enough to train in minutes on two cores.
* `conv` (256 px on GPUs): the taming / LlamaGen stack of residual 3x3 blocks with GroupNorm,
  stride-2 downsampling, self-attention at the lowest resolution, nearest-neighbour upsampling
  in the decoder. It is LlamaGen's VQ layer for layer, so its released tokenizers convert
  exactly (`omni.convert.from_llamagen_vq`; presets `f16-256` = VQ-16, `f8-256` = VQ-8).

This module does encode / quantize / decode only; losses and the discriminator live in
`omni.tokenizers.losses`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from omni.tokenizers.quantize import QuantizerOutput, VectorQuantizer


@dataclass
class VQConfig:
    """Architecture of a VQ-GAN tokenizer (written to the exported folder's config.json)."""

    resolution: int = 32
    """Image side the tokenizer is trained at (any multiple of `downsample` encodes)."""
    architecture: str = "patch"
    """`patch` (light, for small images on CPU) or `conv` (taming-style residual stack)."""
    downsample: int = 4
    """Pixels per code along each side: 32 px with 4 gives 8x8 codes."""
    channels: int = 128
    """Base width of encoder and decoder."""
    channel_mult: tuple[int, ...] = (1,)
    """`conv` only: width multiplier per resolution level (len = log2(downsample) + 1)."""
    num_blocks: int = 2
    """Residual blocks per level (`conv`; the decoder has one more) or MLP blocks (`patch`)."""
    z_channels: int = 256
    """`conv` only: width of the encoder's output (and the decoder's input) around the 1x1
    projections to and from the code dimension."""
    patch_context: bool = True
    """`patch` only: let each code see its neighbours (a 3x3 block) and the image's statistics
    (GroupNorm). False makes a code a function of its own patch alone, so identical patches
    always get the same code: a much smaller code language for the Transformer to learn."""
    codebook_size: int = 1024
    """Number of codes (image tokens) in the codebook."""
    code_dim: int = 8
    """Width of a code vector: encoder outputs are projected to it and l2-normalised for the lookup."""
    beta: float = 0.25
    """Weight of the commitment term."""
    restart_every: int = 100
    """Steps between dead-code restarts (0 disables)."""
    restart_threshold: float = 0.03
    """A code is dead below this fraction of its fair share of usage."""

    def __post_init__(self):
        self.channel_mult = tuple(self.channel_mult)
        if self.architecture not in ("patch", "conv"):
            raise ValueError(f"architecture must be 'patch' or 'conv', got {self.architecture!r}")
        if self.downsample < 1 or self.downsample & (self.downsample - 1):
            raise ValueError(f"downsample must be a power of two, got {self.downsample}")
        if self.resolution % self.downsample:
            raise ValueError(
                f"resolution {self.resolution} is not a multiple of downsample {self.downsample}"
            )
        sizes = {k: getattr(self, k) for k in ("channels", "num_blocks", "z_channels", "code_dim")}
        bad = {k: v for k, v in sizes.items() if v < 1}
        if bad or min(self.channel_mult, default=1) < 1:
            raise ValueError(f"sizes must be positive, got {bad or {'channel_mult': self.channel_mult}}")
        levels = self.downsample.bit_length()  # log2(f) + 1
        if self.architecture == "conv" and len(self.channel_mult) != levels:
            raise ValueError(f"channel_mult needs {levels} entries for downsample {self.downsample}")

    @property
    def grid(self) -> int:
        """Codes per side at the training resolution."""
        return self.resolution // self.downsample

    @classmethod
    def from_name(cls, name: str, **overrides) -> VQConfig:
        """A preset by name (see `PRESETS`), with fields overridden."""
        if name not in PRESETS:
            raise ValueError(f"unknown VQ preset {name!r}; choose one of {sorted(PRESETS)}")
        return dataclasses.replace(PRESETS[name], **overrides)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


PRESETS: dict[str, VQConfig] = {
    # 32 px shapes on a CPU: 8x8 codes.
    "shapes-32": VQConfig(
        resolution=32,
        architecture="patch",
        downsample=4,
        channels=48,
        num_blocks=2,
        patch_context=False,
        codebook_size=256,
    ),
    # LlamaGen's VQ-16 and VQ-8 (the taming stack) for 256 px: 16x16 and 32x32 codes.
    "f16-256": VQConfig(
        resolution=256,
        architecture="conv",
        downsample=16,
        channels=128,
        channel_mult=(1, 1, 2, 2, 4),
        num_blocks=2,
        codebook_size=16384,
    ),
    "f8-256": VQConfig(
        resolution=256,
        architecture="conv",
        downsample=8,
        channels=128,
        channel_mult=(1, 2, 2, 4),
        num_blocks=2,
        codebook_size=16384,
    ),
}


# ----------------------------------------------------------------------------------------------
# Building blocks


def _norm(c: int, local: bool = False) -> nn.Module:
    if local:
        return ChannelNorm(c)
    return nn.GroupNorm(math.gcd(32, c), c, eps=1e-6)  # 32 groups where the width allows


class ChannelNorm(nn.LayerNorm):
    """LayerNorm over the channels of each position of a (B, C, H, W) map: no spatial mixing."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ResBlock(nn.Module):
    """Norm -> SiLU -> conv, twice, with a residual (kernel 3 for `conv`, 1 for MLP blocks).

    `local` swaps GroupNorm for a per-position norm, so a 1x1 block never mixes positions."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 3, local: bool = False):
        super().__init__()
        pad = kernel // 2
        self.body = nn.Sequential(
            _norm(c_in, local), nn.SiLU(), nn.Conv2d(c_in, c_out, kernel, padding=pad),
            _norm(c_out, local), nn.SiLU(), nn.Conv2d(c_out, c_out, kernel, padding=pad),
        )  # fmt: skip
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.body(x)


def _patch_encoder(cfg: VQConfig) -> nn.Sequential:
    c, f, local = cfg.channels, cfg.downsample, not cfg.patch_context
    blocks = [ResBlock(c, c, kernel=1, local=local) for _ in range(cfg.num_blocks)]
    context = [] if local else [ResBlock(c, c, kernel=3)]
    return nn.Sequential(
        nn.Conv2d(3, c, f, stride=f),
        *blocks,
        *context,
        _norm(c, local),
        nn.SiLU(),
        nn.Conv2d(c, cfg.code_dim, 1),
    )


def _patch_decoder(cfg: VQConfig) -> nn.Sequential:
    c, f = cfg.channels, cfg.downsample
    blocks = [ResBlock(c, c, kernel=1) for _ in range(cfg.num_blocks)]
    return nn.Sequential(
        nn.Conv2d(cfg.code_dim, c, 1), ResBlock(c, c, kernel=3), *blocks,
        _norm(c), nn.SiLU(), nn.Conv2d(c, 3 * f * f, 1), nn.PixelShuffle(f),
    )  # fmt: skip


class AttentionBlock(nn.Module):
    """Single-head self-attention over the positions of a (B, C, H, W) map, with a residual
    (taming / LlamaGen: only at the lowest resolution, where it is affordable)."""

    def __init__(self, c: int):
        super().__init__()
        self.norm = _norm(c)
        self.qkv = nn.Conv2d(c, 3 * c, 1)
        self.out = nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).flatten(2).transpose(1, 2).chunk(3, dim=-1)  # (B, HW, C)
        y = F.scaled_dot_product_attention(q, k, v)  # one head: scale 1/sqrt(C)
        return x + self.out(y.transpose(1, 2).reshape(b, c, h, w))


class Downsample(nn.Module):
    """Stride-2 3x3 convolution, padded one pixel on the right and bottom only (taming's layout:
    weights trained that way need the same padding)."""

    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Sequential):
    """Nearest-neighbour x2, then a 3x3 convolution."""

    def __init__(self, c: int):
        super().__init__(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, c, 3, padding=1))


class Level(nn.Module):
    """One resolution of the conv stack: residual blocks, each followed by attention at the lowest
    resolution, then a resampling (none at the stack's end)."""

    def __init__(self, c_in: int, c_out: int, blocks: int, attention: bool, resample: nn.Module | None):
        super().__init__()
        self.blocks = nn.ModuleList(ResBlock(c_in if i == 0 else c_out, c_out) for i in range(blocks))
        self.attentions = nn.ModuleList(AttentionBlock(c_out) for _ in range(blocks if attention else 0))
        self.resample = resample or nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.blocks):
            x = block(x)
            if self.attentions:
                x = self.attentions[i](x)
        return self.resample(x)


def _middle(c: int) -> nn.Sequential:
    return nn.Sequential(ResBlock(c, c), AttentionBlock(c), ResBlock(c, c))


class ConvEncoder(nn.Module):
    """taming / LlamaGen encoder: stem, one `Level` per resolution, middle, head to `z_channels`,
    then a 1x1 projection to the code dimension (LlamaGen's `quant_conv`)."""

    def __init__(self, cfg: VQConfig):
        super().__init__()
        widths = [cfg.channels * m for m in cfg.channel_mult]
        last = len(widths) - 1
        self.stem = nn.Conv2d(3, cfg.channels, 3, padding=1)
        self.levels = nn.ModuleList(
            Level(
                ([cfg.channels] + widths)[i], w, cfg.num_blocks, attention=i == last,
                resample=Downsample(w) if i < last else None,
            )
            for i, w in enumerate(widths)
        )  # fmt: skip
        self.middle = _middle(widths[-1])
        self.head = nn.Sequential(
            _norm(widths[-1]), nn.SiLU(), nn.Conv2d(widths[-1], cfg.z_channels, 3, padding=1)
        )
        self.to_code = nn.Conv2d(cfg.z_channels, cfg.code_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for level in self.levels:
            x = level(x)
        return self.to_code(self.head(self.middle(x)))


class ConvDecoder(nn.Module):
    """The encoder's mirror: 1x1 from the code dimension to `z_channels` (LlamaGen's
    `post_quant_conv`), stem, middle, one `Level` per resolution (lowest first, one block more
    than the encoder's, attention at the lowest), head to RGB."""

    def __init__(self, cfg: VQConfig):
        super().__init__()
        widths = [cfg.channels * m for m in cfg.channel_mult][::-1]
        last = len(widths) - 1
        self.from_code = nn.Conv2d(cfg.code_dim, cfg.z_channels, 1)
        self.stem = nn.Conv2d(cfg.z_channels, widths[0], 3, padding=1)
        self.middle = _middle(widths[0])
        self.levels = nn.ModuleList(
            Level(
                ([widths[0]] + widths)[i], w, cfg.num_blocks + 1, attention=i == 0,
                resample=Upsample(w) if i < last else None,
            )
            for i, w in enumerate(widths)
        )  # fmt: skip
        self.head = nn.Sequential(_norm(widths[-1]), nn.SiLU(), nn.Conv2d(widths[-1], 3, 3, padding=1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.middle(self.stem(self.from_code(z)))
        for level in self.levels:
            x = level(x)
        return self.head(x)


# ----------------------------------------------------------------------------------------------
# The model


class VQModel(nn.Module):
    """Encoder, quantizer and decoder of one `VQConfig`."""

    def __init__(self, config: VQConfig):
        super().__init__()
        self.config = config
        build = {"patch": (_patch_encoder, _patch_decoder), "conv": (ConvEncoder, ConvDecoder)}
        make_encoder, make_decoder = build[config.architecture]
        self.encoder = make_encoder(config)
        self.quantizer = VectorQuantizer(
            config.codebook_size, config.code_dim, config.beta, config.restart_every, config.restart_threshold
        )
        self.decoder = make_decoder(config)
        # channels_last runs these convolutions ~1.4x faster on a CPU (and suits cuDNN in bf16).
        self.to(memory_format=torch.channels_last)

    def quantize(self, images: torch.Tensor) -> QuantizerOutput:
        """Images (B, 3, H, W) in [-1, 1] -> quantizer output on the (B, D, H/f, W/f) grid."""
        f = self.config.downsample
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[2] % f or images.shape[3] % f:
            raise ValueError(
                f"expected images (B, 3, H, W) with H and W multiples of {f}, got {tuple(images.shape)}"
            )
        return self.quantizer(self.encoder(images.contiguous(memory_format=torch.channels_last)))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, QuantizerOutput]:
        """Reconstruction and quantizer output (training)."""
        q = self.quantize(images)
        return self.decoder(q.quantized), q

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1] -> codes (B, h*w), row-major."""
        return self.quantize(images).codes.flatten(1)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        """Codes (B, h*w) or (B, h, w) -> images (B, 3, H, W); a flat grid is taken as square."""
        if codes.ndim == 2:
            h, w = grid or (int(codes.shape[1] ** 0.5),) * 2
            if h * w != codes.shape[1]:
                raise ValueError(f"{codes.shape[1]} codes do not form a {h}x{w} grid; pass grid=(h, w)")
            codes = codes.view(-1, h, w)
        if codes.min() < 0 or codes.max() >= self.config.codebook_size:
            raise ValueError(
                f"codes must lie in [0, {self.config.codebook_size}), got [{codes.min()}, {codes.max()}]"
            )
        return self.decoder(self.quantizer.embed(codes))

    @torch.no_grad()
    def code_appearance(self, chunk: int = 256) -> torch.Tensor:
        """What each code looks like: (codebook_size, 3*f*f), its decoded RGB patch in [-1, 1].

        Each code is decoded tiled over a 3x3 grid and the centre patch kept, so decoders that
        look at neighbouring codes see the code's own texture. The unified model can add a
        projection of this table to the code embeddings (`ModelConfig.image_features`).
        """
        f, n = self.config.downsample, self.config.codebook_size
        device = self.quantizer.codebook.device
        patches = []
        for start in range(0, n, chunk):
            codes = torch.arange(start, min(start + chunk, n), device=device)
            images = self.decode(codes[:, None, None].expand(-1, 3, 3))  # (c, 3, 3f, 3f)
            patches.append(images[:, :, f : 2 * f, f : 2 * f].clamp(-1, 1).flatten(1).float())
        return torch.cat(patches)
