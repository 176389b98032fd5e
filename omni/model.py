"""The unified Transformer: one decoder over text tokens and VQ image codes.

Llama-style (RMSNorm, rotary positions, SwiGLU, optional grouped-query attention) with
Chameleon's stabilisers available as options (QK-norm, z-loss). Attention follows the
omni-attention rules of `omni.attention`: the caller passes per-position document ids and
last-visible-key indices, so text is causal, image blocks are bidirectional (mask mode, and
images that are read) or causal (generated in ar mode), and packed documents are isolated.

    config = ModelConfig.from_name("shapes", vocab_size=vocab.size)
    model = Transformer(config)
    logits = model(tokens, vis)                        # (B, T, V)

The loss is `omni.training.loss.training_loss` (targets aligned with positions: the grammar
decides whether that is the next token or, for masked image tokens, the token itself). This
module imports nothing from Lightning, the data code or the grammar.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from omni.attention import BACKENDS, OmniMask, Visibility, resolve_backend
from omni.checks import check_number
from omni.understanding import EncoderConfig, UnderstandingEncoder

GENERATION_MODES = ("mask", "ar")
UNDERSTANDING = ("codes", "encoder")


@dataclass
class Architecture:
    """What a training config chooses for the Transformer (`model.transformer`; every field is a
    config key). The facts of a tokenizer and a VQ complete it into a `ModelConfig`
    (`omni.assets.Assets.model_config`)."""

    dim: int = 256
    """Width of the residual stream."""
    n_layers: int = 6
    """Number of Transformer blocks."""
    n_heads: int = 4
    """Query heads; dim must be divisible by it."""
    n_kv_heads: int = 0
    """Key/value heads for grouped-query attention (0: as many as n_heads)."""
    hidden_dim: int = 0
    """SwiGLU hidden width (0: 8/3 of dim, rounded up to a multiple of 64)."""
    max_seq_len: int = 256
    """Longest sequence (positions are rotary, so this only bounds caches and checks inputs)."""
    rope_base: float = 10000.0
    """Base of the rotary position frequencies."""
    norm_eps: float = 1e-5
    """RMSNorm epsilon."""
    qk_norm: bool = False
    """RMS-normalise queries and keys per head before attention (Chameleon's stabiliser)."""
    z_loss: float = 0.0
    """Weight of the z-loss, mean squared log-partition of the output (Chameleon uses 1e-5)."""
    image_generation: str = "mask"
    """How images are generated: `mask` (MaskGIT/Show-o: bidirectional image block, masked-token
    loss) or `ar` (Chameleon/LlamaGen: raster order, causal, next-token loss). Images that are
    read (captioning, VQA) are bidirectional in both."""
    attention: str = "auto"
    """Attention backend: auto, sdpa, flex or xformers (see omni.attention)."""
    init_std: float = 0.02
    """Standard deviation of the initial weights."""
    image_positions: bool = False
    """Learn one position embedding per image-token index (as many as the VQ's grid has codes),
    added to the code embedding (MaskGIT/ViT style): a code knows where in the image it sits
    without counting its distance to <boi>. Off: rotary positions only."""
    grid_rotary: bool = False
    """Rotate image tokens by where they sit in the grid (2-D rotary, as Qwen2-VL's M-RoPE): of the
    rotary frequencies, every third turns with the image's first position, the next with that
    plus the token's row, the next plus its column; text turns all of them with its position. Two
    codes then see their offset in rows and columns (1-D positions in a raster mix the two), and
    text sees an image as one block. Needs image_positions (a square grid)."""
    image_features: bool = False
    """Add a fixed table of what each code looks like (its decoded RGB patch, 3*f*f values;
    `VQModel.code_appearance`), projected by a learned matrix, to the code embeddings: codes that
    look alike start alike, instead of as unrelated ids (cf. Janus, whose image inputs are an MLP
    of the VQ codebook vectors)."""
    text_first: bool = False
    """Put a question (vqa, ground, region; omni.grammar) before the image it asks about, so the
    image's tokens, bidirectional among themselves, see what is asked; off: the image first, as
    LLaVA. A layout of the documents, not of the network: prompts are built the same way."""
    understanding: str = "codes"
    """How images that are read (captioning, VQA) are embedded: `codes` (their VQ codes, as
    generated images are) or `encoder` (Janus: a ViT over their pixels and a connector,
    `encoder`; the data then carries the pixels). Generated images are VQ codes either way."""
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    """The understanding encoder (`omni.understanding.EncoderConfig`), with `understanding: encoder`."""

    def __post_init__(self):
        if isinstance(self.encoder, dict):  # read from a config.json
            self.encoder = EncoderConfig.from_dict(self.encoder)
        # Fields keep 0 for "derived" (kv_heads, ffn_dim), so a config written from defaults
        # still derives them after dim or n_heads change.
        problems = []
        numbers = {
            "dim": dict(at_least=1, integer=True),
            "n_layers": dict(at_least=1, integer=True),
            "n_heads": dict(at_least=1, integer=True),
            "n_kv_heads": dict(at_least=0, integer=True),
            "hidden_dim": dict(at_least=0, integer=True),
            "max_seq_len": dict(at_least=1, integer=True),
            "rope_base": dict(above=1.0),
            "norm_eps": dict(above=0.0, below=1.0),
            "z_loss": dict(at_least=0.0),
            "init_std": dict(above=0.0),
        }
        for name, rule in numbers.items():
            try:
                check_number(name, getattr(self, name), **rule)
            except ValueError as e:
                problems.append(str(e))
        if problems:  # the structural checks below divide by these
            raise ValueError("bad model config: " + "; ".join(problems))
        if self.dim % self.n_heads:
            problems.append(f"dim {self.dim} is not divisible by n_heads {self.n_heads}")
        elif (self.dim // self.n_heads) % 2:
            problems.append(f"head size {self.dim // self.n_heads} must be even for rotary positions")
        if self.n_heads % self.kv_heads:
            problems.append(f"n_heads {self.n_heads} is not divisible by n_kv_heads {self.n_kv_heads}")
        if self.image_generation not in GENERATION_MODES:
            problems.append(
                f"image_generation must be one of {GENERATION_MODES}, got {self.image_generation!r}"
            )
        if self.attention not in BACKENDS:
            problems.append(f"attention must be one of {BACKENDS}, got {self.attention!r}")
        if self.understanding not in UNDERSTANDING:
            problems.append(f"understanding must be one of {UNDERSTANDING}, got {self.understanding!r}")
        if problems:
            raise ValueError("bad model config: " + "; ".join(problems))

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def ffn_dim(self) -> int:
        return self.hidden_dim or 64 * math.ceil(8 * self.dim / 3 / 64)

    @classmethod
    def from_name(cls, name: str, **overrides):
        """A named preset (see `PRESETS`), with fields overridden by keyword."""
        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; presets: {sorted(PRESETS)}")
        # The image switches of an Architecture are resolved sizes in a ModelConfig: not copied.
        ours = {f.name: f.type for f in fields(cls)}
        preset = {
            f.name: getattr(PRESETS[name], f.name) for f in fields(Architecture) if ours[f.name] == f.type
        }
        return cls(**preset | overrides)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict):
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model config keys {unknown}; known keys are {sorted(known)}")
        return cls(**data)


@dataclass
class ModelConfig(Architecture):
    """A Transformer's complete configuration: the architecture and the facts of its vocabulary
    and VQ, all resolved (a release's config.json holds this; nothing is left to fill in)."""

    vocab_size: int = 0
    """Ids the model reads and writes (`Vocab.size`)."""
    image_positions: int = 0
    """Learned image positions: one per code of an image (0: none)."""
    image_codes: int = 0
    """How many VQ codes end the vocabulary (ids [vocab_size - image_codes, vocab_size)); the rows
    of the code appearance table (0 without one)."""
    image_features: int = 0
    """Width of the code appearance table (3*f*f for f x f px patches; 0: no table)."""

    def __post_init__(self):
        super().__post_init__()
        rules = {
            "vocab_size": dict(at_least=1, integer=True),
            "image_positions": dict(at_least=0, integer=True),
            "image_codes": dict(at_least=0, integer=True),
            "image_features": dict(at_least=0, integer=True),
        }
        for name, rule in rules.items():
            check_number(f"model.{name}", getattr(self, name), **rule)
        if self.grid_rotary and (
            not self.image_positions or math.isqrt(self.image_positions) ** 2 != self.image_positions
        ):
            raise ValueError(
                f"bad model config: grid_rotary needs image_positions on a square grid (in a training "
                f"config, model.transformer.image_positions: true), got image_positions {self.image_positions}"
            )
        if self.understanding == "encoder" and not self.encoder.patches:
            raise ValueError(
                "bad model config: understanding: encoder needs the encoder's image_size and patch_size "
                "resolved (omni.assets.Assets.model_config does it from the VQ)"
            )
        if self.image_features and not 0 < self.image_codes <= self.vocab_size:
            raise ValueError(
                f"bad model config: image_features needs 0 < image_codes <= vocab_size "
                f"({self.vocab_size}), got image_codes {self.image_codes}"
            )


PRESETS: dict[str, Architecture] = {
    # tests: a few thousand parameters per block
    "tiny": Architecture(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=256),
    # the CPU demo on shapes code shards
    "shapes": Architecture(dim=192, n_layers=4, n_heads=3, max_seq_len=256),
    # GPU runs (parameter counts exclude the embeddings, whose size depends on the vocabulary)
    "100m": Architecture(dim=768, n_layers=12, n_heads=12, max_seq_len=4096, qk_norm=True, z_loss=1e-5),
    "300m": Architecture(
        dim=1024, n_layers=24, n_heads=16, n_kv_heads=8, max_seq_len=4096, qk_norm=True, z_loss=1e-5
    ),
    "1b": Architecture(
        dim=2048, n_layers=18, n_heads=16, n_kv_heads=8, max_seq_len=4096, qk_norm=True, z_loss=1e-5
    ),
}


def _cpu_bf16_autocast(device: torch.device) -> bool:
    return (
        device.type == "cpu"
        and torch.is_autocast_enabled("cpu")
        and torch.get_autocast_dtype("cpu") == torch.bfloat16
    )


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The weight in the activations' dtype keeps bf16 autocast on the fused kernel.
        return F.rms_norm(x, (x.shape[-1],), self.weight.to(x.dtype), self.eps)


def rotary_tables(
    positions: torch.Tensor,
    head_dim: int,
    base: float,
    image_index: torch.Tensor | None = None,
    grid_side: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (B, T, 1, head_dim/2) for integer positions (B, T); computed in fp32.

    With `image_index` (B, T; -1 outside images) and a `grid_side`, image tokens are rotated in
    2-D (`Architecture.grid_rotary`): frequency j turns with the image's first position plus 0,
    the token's row or its column for j % 3 = 0, 1, 2.
    """
    inv_freq = base ** -(
        torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim
    )
    angles = positions.float()[..., None] * inv_freq  # (B, T, D/2)
    if image_index is not None and grid_side:
        index = image_index.clamp_min(0)
        first = positions - index  # every code of an image shares its first code's position
        axes = torch.stack([first, first + index // grid_side, first + index % grid_side], dim=-1)
        section = torch.arange(inv_freq.shape[0], device=positions.device) % 3
        grid_angles = axes.float()[..., section] * inv_freq
        angles = torch.where((image_index >= 0)[..., None], grid_angles, angles)
    return angles.cos()[:, :, None], angles.sin()[:, :, None]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, T, H, D) by the position angles (halves layout)."""
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).type_as(x)


class KVCache:
    """Keys and values of past positions for incremental decoding, preallocated, one pair per layer.

    One tensor per layer, not one for all: a compiled step then writes each in place (a write
    into a slice of a shared tensor makes the compiler copy all of it at every step).
    """

    def __init__(self, config: ModelConfig, batch: int, max_len: int, device=None, dtype=torch.float32):
        shape = (batch, config.kv_heads, max_len, config.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layers)]
        self.max_len = max_len

    def update(self, layer: int, start: int | torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """Store k, v (B, Hkv, T, D) at [start, start+T); return the keys and values of [0, start+T).

        With `start` a tensor of the T positions (a static-shape step, `Transformer.decode_step`),
        return the whole cache: shapes then never change between steps, and the attention mask
        hides the positions not yet written.
        """
        k_all, v_all = self.k[layer], self.v[layer]
        if isinstance(start, torch.Tensor):
            k_all[:, :, start] = k
            v_all[:, :, start] = v
            return k_all, v_all
        end = start + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; asked to write up to {end}")
        k_all[:, :, start:end] = k
        v_all[:, :, start:end] = v
        return k_all[:, :, :end], v_all[:, :, :end]


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.kv_heads, config.head_dim
        self.wqkv = nn.Linear(
            config.dim, (config.n_heads + 2 * config.kv_heads) * config.head_dim, bias=False
        )
        self.wo = nn.Linear(config.n_heads * config.head_dim, config.dim, bias=False)
        self.q_norm = RMSNorm(config.head_dim, config.norm_eps) if config.qk_norm else None
        self.k_norm = RMSNorm(config.head_dim, config.norm_eps) if config.qk_norm else None

    def forward(self, x, rope, mask: OmniMask, cache: KVCache | None, start: int) -> torch.Tensor:
        b, t, _ = x.shape  # (B, T, C)
        q, k, v = self.wqkv(x).split(
            [self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim, self.n_kv_heads * self.head_dim],
            -1,
        )
        q = q.view(b, t, self.n_heads, self.head_dim)
        k = k.view(b, t, self.n_kv_heads, self.head_dim)
        v = v.view(b, t, self.n_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, D)
        if cache is not None:
            k, v = cache.update(self.layer, start, k, v)
        y = mask.attend(q, k, v)  # (B, H, T, D)
        return self.wo(y.transpose(1, 2).reshape(b, t, -1))


class FeedForward(nn.Module):
    """SwiGLU."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.w13 = nn.Linear(config.dim, 2 * config.ffn_dim, bias=False)  # gate and up in one matmul
        self.w2 = nn.Linear(config.ffn_dim, config.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w13(x).chunk(2, dim=-1)
        return self.w2(F.silu(gate) * up)


class Block(nn.Module):
    """One pre-norm Transformer block (the unit of FSDP wrapping and activation checkpointing)."""

    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        self.attention_norm = RMSNorm(config.dim, config.norm_eps)
        self.attention = Attention(config, layer)
        self.ffn_norm = RMSNorm(config.dim, config.norm_eps)
        self.ffn = FeedForward(config)

    def forward(self, x, rope, mask: OmniMask, cache: KVCache | None = None, start: int = 0) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x), rope, mask, cache, start)
        return x + self.ffn(self.ffn_norm(x))


class Transformer(nn.Module):
    """Decoder-only Transformer over the unified vocabulary."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.dim)
        self.image_position = (
            nn.Embedding(config.image_positions, config.dim) if config.image_positions else None
        )
        self.code_projection = None
        if config.image_features:
            # A buffer, not a parameter: saved with the weights, never trained (set it from the VQ).
            self.register_buffer("code_features", torch.zeros(config.image_codes, config.image_features))
            self.code_projection = nn.Linear(config.image_features, config.dim, bias=False)
            self.code_readout = nn.Linear(config.dim, config.image_features, bias=False)
        self.understanding = (
            UnderstandingEncoder(config.encoder, config.dim) if config.understanding == "encoder" else None
        )
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.output = nn.Linear(config.dim, config.vocab_size, bias=False)
        self.activation_checkpointing = False
        self._backend: str | None = None
        if self.embedding.weight.device.type != "meta":
            self.reset_parameters()

    def reset_parameters(self) -> None:
        """Normal(0, init_std) weights; residual projections scaled by 1/sqrt(2 n_layers) (GPT-2)."""
        std = self.config.init_std
        for name, p in self.named_parameters():
            if name.startswith("understanding."):
                continue  # a ViT and its connector: initialised their own way, below
            if p.dim() == 1:
                nn.init.ones_(p)  # norm weights
            elif name.startswith(("code_projection", "code_readout")):
                nn.init.zeros_(p)  # start as a plain embedding; learn how much the look helps
            elif name.endswith(("wo.weight", "w2.weight")):
                nn.init.normal_(p, std=std / math.sqrt(2 * self.config.n_layers))
            else:
                nn.init.normal_(p, std=std)
        if self.understanding is not None:
            self.understanding.reset_parameters()

    def num_params(self, embedding: bool = False) -> int:
        """Parameter count; without the input embeddings (lookups, not matmuls) by default."""
        n = sum(p.numel() for p in self.parameters())
        if embedding:
            return n
        lookups = [self.embedding] + ([self.image_position] if self.image_position is not None else [])
        return n - sum(m.weight.numel() for m in lookups)

    def backend(self, device) -> str:
        if self._backend is None:
            backend = resolve_backend(self.config.attention, device)
            if backend == "flex" and self.config.head_dim < 16:
                if self.config.attention == "flex":
                    raise ValueError(
                        f"flex attention needs a head size of at least 16, got {self.config.head_dim}"
                    )
                backend = "sdpa"  # auto: flex's fused kernel does not take heads this small
            self._backend = backend
        return self._backend

    def forward(
        self,
        tokens: torch.Tensor,
        vis: Visibility | None = None,
        positions: torch.Tensor | None = None,
        cache: KVCache | None = None,
        start: int = 0,
        image_index: torch.Tensor | None = None,
        read_pixels: torch.Tensor | None = None,
        read_at: torch.Tensor | None = None,
    ):
        """Logits (B, T, V) for `tokens` (B, T) at sequence positions [start, start+T).

        `vis` describes the whole sequence (at least start+T positions; default: one causal
        document). `positions` are rotary positions (B, T) (default start..start+T). With a
        `cache`, keys and values of [start, start+T) are stored and [0, start) are read from it.
        `image_index` (B, T) is each token's index inside its image block, -1 outside images
        (needed when the config has `image_positions`; default: no image tokens).
        With `understanding: encoder`, `read_pixels` (N, 3, R, R) are the images that are read and
        `read_at` (B, T) bool marks their blocks' positions, row-major: the encoder's vectors of
        image n replace the embeddings of the n-th run of `patches` marked positions.
        """
        b, t = tokens.shape
        if start + t > self.config.max_seq_len:
            raise ValueError(
                f"sequence of {start + t} positions exceeds max_seq_len {self.config.max_seq_len}"
            )
        if vis is None:
            pos = torch.arange(start + t, device=tokens.device).expand(b, -1)
            vis = Visibility(torch.zeros_like(pos), pos)
        if positions is None:
            positions = torch.arange(start, start + t, device=tokens.device).expand(b, -1)
        backend = self.backend(tokens.device)
        if backend == "sdpa" and self.config.attention == "auto" and _cpu_bf16_autocast(tokens.device):
            # sdpa's CPU kernel is slower in bf16 than fp32, its backward most (the shapes model's
            # attention, forward + backward: 21.8 ms in bf16 vs 12.1 ms written out): under bf16
            # autocast on a CPU, auto writes attention out (bench/train_throughput.py measures it).
            backend = "math"
        mask = OmniMask(vis, backend, self.config.n_heads, q_start=start, q_end=start + t)
        if self.image_position is not None and image_index is not None:
            self._check_image_index(image_index)
        reads = self._checked_reads(tokens, read_pixels, read_at)
        return self._run(tokens, self.rotary(positions, image_index), image_index, mask, cache, start, reads)

    def rotary(self, positions: torch.Tensor, image_index: torch.Tensor | None = None):
        """The rotary tables of tokens at `positions` (B, T), in 2-D for image tokens with `grid_rotary`."""
        side = math.isqrt(self.config.image_positions) if self.config.grid_rotary else 0
        return rotary_tables(positions, self.config.head_dim, self.config.rope_base, image_index, side)

    def decode_step(
        self,
        tokens: torch.Tensor,
        input_pos: torch.Tensor,
        cache: KVCache,
        rope: tuple[torch.Tensor, torch.Tensor],
        image_index: torch.Tensor,
        visible: torch.Tensor,
    ) -> torch.Tensor:
        """Logits (B, T, V) of `tokens` (B, T) at sequence positions `input_pos` (T,), against the
        whole preallocated `cache`: every shape is fixed for a batch, so `torch.compile` traces it
        once (gpt-fast's decode step) for all the steps of a generation.

        The rest describes the whole sequence of L = cache length positions, made once per batch:
        `rope` (`Transformer.rotary` of the positions, (B, L, 1, D/2) each), `image_index` (B, L) and
        `visible` (B, 1, L, L) (`Visibility.dense_mask()`); the rows of `input_pos` are picked here.
        """
        rope = tuple(table.index_select(1, input_pos) for table in rope)
        mask = OmniMask.prebuilt(visible.index_select(2, input_pos))
        return self._run(tokens, rope, image_index.index_select(1, input_pos), mask, cache, input_pos)

    def _run(self, tokens, rope, image_index, mask: OmniMask, cache, start, reads=None) -> torch.Tensor:
        """Embed, the blocks, the output head: the body of `forward` and `decode_step`."""
        x = self.embedding(tokens)  # (B, T, C)
        if self.code_projection is not None:
            code = tokens - (self.config.vocab_size - self.config.image_codes)
            is_code = (code >= 0)[..., None].to(x.dtype)
            x = x + self.code_projection(self.code_features[code.clamp_min(0)].to(x.dtype)) * is_code
        if reads is not None:  # images that are read: the encoder's vectors replace their codes'
            pixels, at = reads
            vectors = self.understanding(pixels.to(self.embedding.weight.dtype))  # (N, patches, C)
            x = x.masked_scatter(at[..., None], vectors.to(x.dtype))
        if self.image_position is not None and image_index is not None:
            inside = (image_index >= 0)[..., None].to(self.embedding.weight.dtype)
            x = x + self.image_position(image_index.clamp_min(0)) * inside
        for block in self.blocks:
            if self.activation_checkpointing and self.training:
                x = checkpoint(block, x, rope, mask, cache, start, use_reentrant=False)
            else:
                x = block(x, rope, mask, cache, start)
        h = self.norm(x)
        weight = self.output.weight
        if self.code_projection is not None:
            # Output side of the table: a code's logit also scores how well its look matches a
            # predicted look (readout(h) . table[code]), so "some red patch" raises every red code
            # at once. Folded into the output rows of the codes: one matmul, no second (B, T, V).
            k = self.config.image_codes
            looks = self.code_features.to(weight.dtype) @ self.code_readout.weight.to(
                weight.dtype
            )  # (k, dim)
            weight = torch.cat([weight[:-k], weight[-k:] + looks])
        return F.linear(h, weight)  # (B, T, V)

    def _checked_reads(self, tokens, read_pixels, read_at):
        """(pixels, read_at) for `_run`, or None when no image is read through the encoder."""
        if read_pixels is None:
            return None
        if self.understanding is None:
            raise ValueError(
                "read_pixels were given but this model reads images as their VQ codes (understanding: codes)"
            )
        if read_at is None or read_at.shape != tokens.shape or read_at.dtype != torch.bool:
            raise ValueError(
                f"read_at must be a bool tensor shaped like the tokens {tuple(tokens.shape)}, got "
                f"{None if read_at is None else (tuple(read_at.shape), read_at.dtype)}"
            )
        # A batch without read images still runs the encoder (on none): its weights then take part
        # in every step, as DDP expects. The count is checked where it costs nothing (on a GPU it
        # would sync); the packer and the samplers mark one block of `patches` positions per image.
        if (
            read_at.device.type == "cpu"
            and int(read_at.sum()) != len(read_pixels) * self.config.encoder.patches
        ):
            raise ValueError(
                f"read_at marks {int(read_at.sum())} positions but {len(read_pixels)} read images of "
                f"{self.config.encoder.patches} patches need {len(read_pixels) * self.config.encoder.patches}"
            )
        return read_pixels, read_at

    def _check_image_index(self, image_index: torch.Tensor) -> None:
        # Checked where it costs nothing (a CPU tensor); on a GPU it would sync every step, and
        # training (resolve_image_fields) and load_pretrained check the grid against the model.
        if (
            image_index.device.type == "cpu"
            and image_index.numel()
            and int(image_index.max()) >= self.config.image_positions
        ):
            raise ValueError(
                f"an image block of {int(image_index.max()) + 1} codes is longer than the model's "
                f"image_positions {self.config.image_positions}: was the model trained with another VQ?"
            )
