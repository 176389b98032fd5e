"""The understanding encoder (Janus): a ViT over an image's pixels and a connector into the
Transformer's width, whose vectors take the place of the code embeddings of images that are *read*.

    encoder = UnderstandingEncoder(EncoderConfig(image_size=32, patch_size=4), out_dim=192)
    vectors = encoder(pixels)                       # (N, 3, 32, 32) in [-1, 1] -> (N, 64, 192)
    load_encoder_weights(encoder.vit, "vit.safetensors")   # a pretrained timm / open_clip file

Pixel codes are made to redraw an image; what an image *means* (which object, where, beside
what) is easier to read from its pixels with a vision encoder (Janus reads with SigLIP, writes
with VQ codes). The ViT is timm's `VisionTransformer`; the connector is LLaVA-1.5's two-layer MLP
projector (`mlp2x_gelu`) or one linear map. The encoder gives one vector per patch and is sized so
that its patches are the VQ's codes (`omni.assets` resolves and checks it), so a read image keeps
its block of the sequence and every omni-attention rule is unchanged. Generated images are
always VQ codes. This module imports no Lightning or data code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from functools import partial
from pathlib import Path

import torch
from torch import nn

from omni.checks import check_number

CONNECTORS = ("mlp2x_gelu", "linear")


@dataclass
class EncoderConfig:
    """The understanding encoder (`model.transformer.encoder`; used with `understanding: encoder`)."""

    image_size: int = 0
    """Pixels per side the encoder reads (0: the VQ's resolution). Images are resized and
    centre-cropped to it, as for the VQ."""
    patch_size: int = 0
    """Pixels per side of one patch (0: image_size / the VQ grid's side, one vector per code).
    (image_size / patch_size)^2 must equal the codes of an image."""
    dim: int = 192
    """ViT width."""
    depth: int = 2
    """ViT blocks."""
    heads: int = 3
    """ViT attention heads."""
    mlp_ratio: float = 4.0
    """ViT MLP width / dim."""
    class_token: bool = False
    """Prepend a class token (to match a pretrained ViT that has one; its output is not used)."""
    pre_norm: bool = False
    """LayerNorm before the blocks (CLIP / open_clip ViTs have it)."""
    norm_eps: float = 1e-6
    """LayerNorm epsilon (timm's ViTs: 1e-6; CLIP / open_clip: 1e-5)."""
    pixel_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    """Per-channel mean the ViT's weights expect of pixels in [0, 1] (0.5: Omni's own [-1, 1];
    CLIP weights: 0.4815, 0.4578, 0.4082)."""
    pixel_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    """Per-channel std the ViT's weights expect (CLIP weights: 0.2686, 0.2613, 0.2758)."""
    connector: str = "mlp2x_gelu"
    """Into the Transformer's width: `mlp2x_gelu` (LLaVA-1.5: linear, GELU, linear) or `linear`."""

    def __post_init__(self):
        self.pixel_mean, self.pixel_std = tuple(self.pixel_mean), tuple(self.pixel_std)
        rules = {
            "image_size": dict(at_least=0, integer=True),
            "patch_size": dict(at_least=0, integer=True),
            "dim": dict(at_least=1, integer=True),
            "depth": dict(at_least=1, integer=True),
            "heads": dict(at_least=1, integer=True),
            "mlp_ratio": dict(above=0.0),
            "norm_eps": dict(above=0.0, below=1.0),
        }
        for name, rule in rules.items():
            check_number(f"model.transformer.encoder.{name}", getattr(self, name), **rule)
        problems = []
        if self.dim % self.heads:
            problems.append(f"dim {self.dim} is not divisible by heads {self.heads}")
        if self.connector not in CONNECTORS:
            problems.append(f"connector must be one of {CONNECTORS}, got {self.connector!r}")
        for name in ("pixel_mean", "pixel_std"):
            value = getattr(self, name)
            if len(value) != 3 or (name == "pixel_std" and min(value) <= 0):
                problems.append(f"{name} must be 3 numbers (std > 0), got {list(value)}")
        if self.image_size and self.patch_size and self.image_size % self.patch_size:
            problems.append(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if problems:
            raise ValueError("bad model.transformer.encoder: " + "; ".join(problems))

    @property
    def patches(self) -> int:
        """Vectors the encoder gives per image."""
        return (self.image_size // self.patch_size) ** 2 if self.patch_size else 0

    def resolved(self, resolution: int, grid_side: int) -> EncoderConfig:
        """This config with sizes left 0 taken from a VQ of `resolution` px and `grid_side`^2
        codes; ValueError when its patches cannot be the VQ's codes."""
        image_size = self.image_size or resolution
        patch_size = self.patch_size or image_size // grid_side
        out = EncoderConfig(**{**asdict(self), "image_size": image_size, "patch_size": patch_size})
        if patch_size < 1 or out.patches != grid_side**2 or image_size % patch_size:
            raise ValueError(
                f"bad model.transformer.encoder: image_size {image_size} / patch_size {patch_size} "
                f"gives {out.patches} patches, but an image is {grid_side}x{grid_side} = {grid_side**2} "
                f"VQ codes and the encoder's vectors take their place; choose patch_size = image_size / "
                f"{grid_side} (0 does it)"
            )
        return out

    @classmethod
    def from_dict(cls, data: dict) -> EncoderConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown encoder config keys {unknown}; known keys are {sorted(known)}")
        return cls(**data)


class UnderstandingEncoder(nn.Module):
    """Pixels (N, 3, R, R) in [-1, 1] -> one vector per patch (N, patches, out_dim)."""

    def __init__(self, config: EncoderConfig, out_dim: int):
        super().__init__()
        from timm.models.vision_transformer import VisionTransformer

        if not config.patches:
            raise ValueError(
                "the encoder's image_size and patch_size must be resolved (EncoderConfig.resolved)"
            )
        self.config = config
        self.vit = VisionTransformer(
            img_size=config.image_size,
            patch_size=config.patch_size,
            embed_dim=config.dim,
            depth=config.depth,
            num_heads=config.heads,
            mlp_ratio=config.mlp_ratio,
            class_token=config.class_token,
            pre_norm=config.pre_norm,
            norm_layer=partial(nn.LayerNorm, eps=config.norm_eps),
            num_classes=0,  # no classifier: the patch vectors are the output
            global_pool="",
        )
        if config.connector == "linear":
            self.connector = nn.Sequential(nn.Linear(config.dim, out_dim))
        else:
            self.connector = nn.Sequential(
                nn.Linear(config.dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim)
            )
        # From Omni's [-1, 1] to what the ViT's weights expect: x' = x * scale + shift (numbers, not
        # buffers: a model built on the meta device and loaded from safetensors gets them right).
        self.pixel_scale = [0.5 / s for s in config.pixel_std]
        self.pixel_shift = [(0.5 - m) / s for m, s in zip(config.pixel_mean, config.pixel_std)]
        self.reset_connector()

    def reset_parameters(self) -> None:
        """timm's ViT initialisation, and the connector's."""
        self.vit.init_weights()
        self.reset_connector()

    def reset_connector(self) -> None:
        for layer in self.connector:
            if isinstance(layer, nn.Linear):
                nn.init.normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        size = self.config.image_size
        if pixels.ndim != 4 or tuple(pixels.shape[1:]) != (3, size, size):
            raise ValueError(
                f"the understanding encoder reads (N, 3, {size}, {size}) pixels, got {tuple(pixels.shape)}"
            )
        if self.pixel_scale != [1.0] * 3 or self.pixel_shift != [0.0] * 3:
            scale = pixels.new_tensor(self.pixel_scale).view(1, 3, 1, 1)
            pixels = pixels * scale + pixels.new_tensor(self.pixel_shift).view(1, 3, 1, 1)
        x = self.vit.forward_features(pixels)  # (N, prefix + patches, dim)
        return self.connector(x[:, self.vit.num_prefix_tokens :])  # (N, patches, out_dim)


def load_encoder_weights(vit: nn.Module, path: str | Path) -> None:
    """Load a pretrained ViT's weights from a local safetensors file into `vit`, strictly.

    Two layouts are read: timm's own (`patch_embed.proj.weight`, `blocks.0...`, as timm's
    `model.safetensors` files on the Hub), and OpenAI CLIP / open_clip's (`visual.conv1.weight`,
    `visual.transformer.resblocks.0...`), converted by timm's `checkpoint_filter_fn` (set
    `class_token`, `pre_norm` and `norm_eps` 1e-5 to match a CLIP ViT). A classifier head or CLIP's final projection
    is dropped (the connector replaces it). Anything else that differs is a ValueError naming the
    file, the key and both shapes.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    from timm.models.vision_transformer import checkpoint_filter_fn

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"encoder weights {path}: no such file (give a local .safetensors file)")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"encoder weights {path} cannot be read as safetensors ({e})") from e
    if any(k.startswith("visual.") for k in state):
        state = {k: v for k, v in state.items() if k.startswith("visual.")}
        state = checkpoint_filter_fn(state, vit)  # OpenAI CLIP / open_clip layout -> timm's
    state = {k: v for k, v in state.items() if not k.startswith(("head.", "fc_norm.", "visual.proj"))}
    ours = vit.state_dict()
    for key, tensor in state.items():
        if key in ours and tuple(tensor.shape) != tuple(ours[key].shape):
            raise ValueError(
                f"encoder weights {path}: {key} is {tuple(tensor.shape)} in the file but "
                f"{tuple(ours[key].shape)} in the encoder of model.transformer.encoder; set the encoder's "
                f"image_size, patch_size, dim, depth, heads, mlp_ratio and class_token to the file's"
            )
    missing, unexpected = sorted(set(ours) - set(state)), sorted(set(state) - set(ours))
    if missing or unexpected:
        raise ValueError(
            f"encoder weights {path} do not match the encoder of model.transformer.encoder: "
            f"missing {missing[:4]}{' ...' if len(missing) > 4 else ''}, unexpected "
            f"{unexpected[:4]}{' ...' if len(unexpected) > 4 else ''} (is it a ViT? are class_token and "
            f"pre_norm set as the file's model has them?)"
        )
    vit.load_state_dict(state, strict=True)
