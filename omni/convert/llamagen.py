"""LlamaGen's VQ tokenizers (their `.pt` files) -> Omni VQ folders (`from_llamagen_vq`).

LlamaGen's VQ is the taming stack that Omni's `conv` architecture builds layer for layer
(`omni.tokenizers.vqgan`), so the conversion renames weights (and fuses each attention block's
q, k, v into one `qkv`); the sizes are read off the weights, so VQ-16, VQ-8 and other widths need
no flag. VQ-16 becomes preset `f16-256`, VQ-8 `f8-256`. The test holds the converted VQ to the
codes and reconstruction that LlamaGen's own code gives for the same weights.

This is the one place Omni reads a `.pt`: with `torch.load(weights_only=True)`, which builds
tensors and plain containers only (LlamaGen's training checkpoints also hold their
`argparse.Namespace` of arguments, allowed by name), from an explicit command, never from
`omni.load_pretrained`. A safetensors file of the same state dict (their Hub format) is read too.
"""

from __future__ import annotations

import argparse
import pickle
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from omni.release import load_strict
from omni.tokenizers.export import save_vq
from omni.tokenizers.vqgan import PRESETS, VQConfig, VQModel

LLAMAGEN_ORIGIN = "LlamaGen VQ (github.com/FoundationVision/LlamaGen, tokenizer/tokenizer_image/vq_model.py)"

# LlamaGen name -> Omni name, applied in order to each key (after the attention's q/k/v fusion).
_RENAMES = [
    (r"^quant_conv\.", "encoder.to_code."),
    (r"^post_quant_conv\.", "decoder.from_code."),
    (r"^quantize\.embedding\.weight$", "quantizer.codebook"),
    (r"\.conv_in\.", ".stem."),
    (r"\.mid\.", ".middle."),
    (r"\.norm_out\.", ".head.0."),
    (r"\.conv_out\.", ".head.2."),
    (r"\.conv_blocks\.(\d+)\.res\.", r".levels.\1.blocks."),
    (r"\.conv_blocks\.(\d+)\.attn\.", r".levels.\1.attentions."),
    (r"\.conv_blocks\.(\d+)\.downsample\.conv\.", r".levels.\1.resample.conv."),
    (r"\.conv_blocks\.(\d+)\.upsample\.conv\.", r".levels.\1.resample.1."),
    # inside a residual block: norm -> SiLU -> conv, twice (`ResBlock.body`), and the 1x1 skip
    (r"\.norm1\.", ".body.0."),
    (r"\.conv1\.", ".body.2."),
    (r"\.norm2\.", ".body.3."),
    (r"\.conv2\.", ".body.5."),
    (r"\.nin_shortcut\.", ".skip."),
    (r"\.proj_out\.", ".out."),
]
_DROPPED = ("quantize.codebook_used",)  # LlamaGen's usage window, a training statistic
_QKV = re.compile(r"^(.*)\.([qkv])\.(weight|bias)$")


class LlamaGenVQError(ValueError):
    """A file that is not a LlamaGen VQ checkpoint Omni can convert (the message says why)."""


def read_llamagen_state(src: Path) -> dict[str, torch.Tensor]:
    """The VQ state dict in a LlamaGen checkpoint: `.pt` (their training or release files: the
    `ema` weights when present, else `model`, else `state_dict`) or `.safetensors`."""
    if not src.is_file():
        raise FileNotFoundError(f"{src} not found: give a LlamaGen VQ checkpoint (e.g. vq_ds16_c2i.pt)")
    if src.suffix == ".safetensors":
        try:
            return load_file(str(src))
        except (SafetensorError, OSError) as e:
            raise LlamaGenVQError(f"{src} is not a readable safetensors file ({e})") from e
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            checkpoint = torch.load(src, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise LlamaGenVQError(
            f"{src} holds more than weights and plain containers, so Omni will not unpickle it "
            f"(weights_only: {str(e).splitlines()[0][:200]}); save its state dict with "
            f"torch.save({{'model': model.state_dict()}}, path) or as safetensors"
        ) from e
    except (RuntimeError, EOFError, OSError) as e:
        raise LlamaGenVQError(
            f"{src} is not a readable PyTorch checkpoint ({str(e)[:200]}); re-download it"
        ) from e
    if isinstance(checkpoint, dict):
        for key in ("ema", "model", "state_dict"):  # the order LlamaGen's own scripts use
            if isinstance(checkpoint.get(key), dict):
                checkpoint = checkpoint[key]
                break
    if not isinstance(checkpoint, dict) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise LlamaGenVQError(
            f"{src}: no state dict of tensors found (looked at 'ema', 'model', 'state_dict')"
        )
    return checkpoint


def _count(state: dict, prefix: str) -> int:
    """How many consecutive `prefix{i}.` entries exist."""
    i = 0
    while any(k.startswith(f"{prefix}{i}.") for k in state):
        i += 1
    return i


def config_of(state: dict[str, torch.Tensor], src: Path | str, resolution: int = 256) -> VQConfig:
    """The Omni `VQConfig` whose `conv` stack has the shapes of LlamaGen weights `state`."""

    def weight(key: str) -> torch.Tensor:
        if key not in state:
            raise LlamaGenVQError(
                f"{src} is not a LlamaGen VQ checkpoint: it has no {key!r} "
                f"(it holds {len(state)} tensors, e.g. {sorted(state)[:3]})"
            )
        return state[key]

    codebook_size, code_dim = weight("quantize.embedding.weight").shape
    z_channels = weight("quant_conv.weight").shape[1]
    channels = weight("encoder.conv_in.weight").shape[0]
    levels = _count(state, "encoder.conv_blocks.")
    num_blocks = _count(state, "encoder.conv_blocks.0.res.")
    widths = [weight(f"encoder.conv_blocks.{i}.res.0.conv1.weight").shape[0] for i in range(levels)]
    decoder_widths = [
        weight(f"decoder.conv_blocks.{i}.res.0.conv1.weight").shape[0]
        for i in range(_count(state, "decoder.conv_blocks."))
    ][::-1]
    if decoder_widths != widths or _count(state, "decoder.conv_blocks.0.res.") != num_blocks + 1:
        raise LlamaGenVQError(
            f"{src}: the decoder's widths {decoder_widths} differ from the encoder's {widths} (or its "
            f"block count from {num_blocks} + 1); Omni's conv VQ mirrors one channel_mult"
        )
    if any(w % channels for w in widths):
        raise LlamaGenVQError(f"{src}: level widths {widths} are not multiples of the base width {channels}")
    try:
        return VQConfig(
            resolution=resolution,
            architecture="conv",
            downsample=2 ** (levels - 1),
            channels=channels,
            channel_mult=tuple(w // channels for w in widths),
            num_blocks=num_blocks,
            z_channels=z_channels,
            codebook_size=codebook_size,
            code_dim=code_dim,
        )
    except ValueError as e:
        raise LlamaGenVQError(f"{src}: {e}") from e


def omni_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """LlamaGen names -> Omni names (q, k, v of each attention fused into `qkv`), fp32."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        if key in _DROPPED:
            continue
        match = _QKV.match(key)
        if match:
            block, part, kind = match.groups()
            qkv.setdefault(f"{block}.qkv.{kind}", {})[part] = tensor.float()
        else:
            out[key] = tensor.float()
    for fused, parts in qkv.items():
        if sorted(parts) != ["k", "q", "v"]:
            raise LlamaGenVQError(f"attention weights incomplete at {fused!r}: found only {sorted(parts)}")
        out[fused] = torch.cat([parts["q"], parts["k"], parts["v"]])
    renamed = {}
    for key, tensor in out.items():
        for pattern, replacement in _RENAMES:
            key = re.sub(pattern, replacement, key)
        renamed[key] = tensor
    return renamed


def matching_preset(config: VQConfig) -> str | None:
    """The name of the preset with exactly these sizes (resolution aside), if any."""
    sizes = {**config.to_dict(), "resolution": None}
    for name, preset in PRESETS.items():
        if {**preset.to_dict(), "resolution": None} == sizes:
            return name
    return None


def from_llamagen_vq(src: str | Path, dst: str | Path, resolution: int = 256) -> Path:
    """Convert LlamaGen VQ checkpoint `src` (`.pt` or `.safetensors`) into the Omni VQ folder
    `dst` (written whole; `omni.tokenizers.export.load_vq` loads it). `resolution` is the image
    side the VQ was trained at (256 for LlamaGen's released VQ-16 / VQ-8); any multiple of its
    downsampling factor still encodes."""
    src = Path(src)
    state = read_llamagen_state(src)
    config = config_of(state, src, resolution)
    model = VQModel(config)
    expected = model.state_dict()
    # The quantizer's own buffers: a trained codebook (no re-initialisation from data), fresh usage.
    converted = {**{k: v for k, v in expected.items() if k.startswith("quantizer.")}, **omni_state(state)}
    converted["quantizer.initialized"] = torch.tensor(True)
    load_strict(model, converted, str(src), "the layout of LlamaGen's VQ (in Omni's names)", LlamaGenVQError)
    preset = matching_preset(config)
    return save_vq(
        model,
        dst,
        extra={"converted_from": {"source": src.name, "origin": LLAMAGEN_ORIGIN, "preset": preset}},
    )
