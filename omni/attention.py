"""Omni-attention: who may attend to whom, and the backends that compute it.

A packed sequence holds documents; a document holds text and image blocks. The rules:

* packed documents never see each other;
* text is causal;
* inside an image block attention is bidirectional (mask mode, and any image that is read
  rather than generated) or causal (generated in ar mode), and an image token also sees
  everything before its block;
* text after an image sees the whole image.

All of it is two per-position vectors: `doc` (document id; -1 for padding, which sees only
itself) and `last` (the last key index a query may see). Query i may see key j exactly when
`doc[i] == doc[j] and j <= last[i]`. Causal text has last[i] = i; a bidirectional image block
[s, e) has last[i] = e - 1 for its tokens. Every backend derives its mask from these vectors:

* `sdpa`: a dense boolean mask for `torch.nn.functional.scaled_dot_product_attention` (the
  reference; any device);
* `flex`: a `flex_attention` block mask built once per batch and shared by all layers (CUDA;
  on a CPU flex_attention has no backward);
* `xformers`: an additive bias for `xformers.ops.memory_efficient_attention` (CUDA only,
  imported lazily so that CPU runs never load it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

BACKENDS = ("auto", "sdpa", "flex", "xformers")


@dataclass(frozen=True)
class Segment:
    """A span [start, end) of one packed sequence: a text run or an image block of one document."""

    start: int
    end: int
    doc: int
    image: bool = False
    bidirectional: bool = True  # for image blocks: mask mode (True) or ar mode (False)


@dataclass
class Visibility:
    """Per-position description of omni-attention for a batch: doc ids and last visible keys (B, T)."""

    doc: torch.Tensor
    last: torch.Tensor

    def to(self, device) -> Visibility:
        return Visibility(self.doc.to(device), self.last.to(device))

    def dense_mask(self, q_start: int = 0, q_end: int | None = None) -> torch.Tensor:
        """(B, 1, Tq, Tk) boolean, True where query i may attend to key j.

        Queries are positions [q_start, q_end) (default: all), keys [0, q_end): the rows a
        KV-cached decoding step needs.
        """
        q_end = self.doc.shape[1] if q_end is None else q_end
        j = torch.arange(q_end, device=self.doc.device)
        doc_q, last_q = self.doc[:, q_start:q_end], self.last[:, q_start:q_end]
        same_doc = doc_q[:, :, None] == self.doc[:, None, :q_end]
        return (same_doc & (j[None, None, :] <= last_q[:, :, None]))[:, None]


def build_visibility(segments: Sequence[Sequence[Segment]], length: int) -> Visibility:
    """Visibility of a batch from each sequence's segments; uncovered positions are padding."""
    b = len(segments)
    pos = torch.arange(length)
    doc = torch.full((b, length), -1, dtype=torch.long)
    last = pos.repeat(b, 1)  # causal by default; padding sees only itself (doc -1 matches padding too)
    for row, segs in enumerate(segments):
        for s in segs:
            if not 0 <= s.start < s.end <= length:
                raise ValueError(f"segment [{s.start}, {s.end}) does not fit a sequence of length {length}")
            if s.doc < 0:
                raise ValueError(f"document ids are >= 0, got {s.doc}")
            doc[row, s.start : s.end] = s.doc
            if s.image and s.bidirectional:
                last[row, s.start : s.end] = s.end - 1
    # Padding positions share doc -1; keep them from seeing each other by giving each its own id.
    pad = doc < 0
    doc = torch.where(pad, -1 - pos.expand(b, length), doc)
    return Visibility(doc, last)


# ----------------------------------------------------------------------------------------------
# Backends


def reference_attention(q, k, v, vis: Visibility) -> torch.Tensor:
    """Naive softmax attention with the omni mask; (B, H, T, D) in and out. For tests."""
    scores = (q @ k.transpose(-2, -1)) / q.shape[-1] ** 0.5
    scores = scores.masked_fill(~vis.dense_mask(), float("-inf"))
    return scores.softmax(-1) @ v


def sdpa_attention(q, k, v, mask: torch.Tensor) -> torch.Tensor:
    """scaled_dot_product_attention with a dense boolean mask (B, 1, T, T)."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def flex_block_mask(vis: Visibility, heads: int | None = None):
    """A flex_attention BlockMask for the batch (build once per forward, share across layers)."""
    from torch.nn.attention.flex_attention import create_block_mask

    doc, last = vis.doc, vis.last

    def mask_mod(b, h, q_idx, kv_idx):
        return (doc[b, q_idx] == doc[b, kv_idx]) & (kv_idx <= last[b, q_idx])

    b, t = doc.shape
    return create_block_mask(mask_mod, b, heads, t, t, device=doc.device)


_compiled_flex = None


def flex_attention(q, k, v, block_mask) -> torch.Tensor:
    """flex_attention with a prebuilt block mask; compiled into a fused kernel on CUDA."""
    global _compiled_flex
    from torch.nn.attention.flex_attention import flex_attention as _flex

    gqa = k.shape[1] != q.shape[1]
    if q.is_cuda:
        if _compiled_flex is None:
            _compiled_flex = torch.compile(_flex)
        return _compiled_flex(q, k, v, block_mask=block_mask, enable_gqa=gqa)
    return _flex(q, k, v, block_mask=block_mask, enable_gqa=gqa)  # CPU: the unfused path, forward only


def xformers_bias(vis: Visibility, heads: int, dtype=torch.float32) -> torch.Tensor:
    """Additive bias (B, H, T, T_pad)[..., :T] for xformers: 0 where visible, -inf elsewhere.

    xformers wants the bias's last dimension allocated to a multiple of 8; the view keeps T.
    """
    mask = vis.dense_mask()
    b, _, t, _ = mask.shape
    padded = -(-t // 8) * 8
    bias = torch.full((b, heads, t, padded), float("-inf"), dtype=dtype, device=mask.device)
    bias[..., :t].masked_fill_(mask.expand(b, heads, t, t), 0.0)
    return bias[..., :t]


def xformers_attention(q, k, v, bias: torch.Tensor) -> torch.Tensor:
    """memory_efficient_attention; q, k, v (B, H, T, D) as elsewhere (xformers wants B, T, H, D)."""
    import xformers.ops as xops  # lazy: importing xformers on a CPU prints a warning

    out = xops.memory_efficient_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_bias=bias.to(q.dtype)
    )
    return out.transpose(1, 2)


class OmniMask:
    """The omni mask prepared once per forward pass for one backend and shared by every layer.

    A KV-cached step (queries [q_start, q_end) against keys [0, q_end)) always uses `sdpa`:
    its mask is a few rows, and the fused kernels want square problems.
    """

    def __init__(self, vis: Visibility, backend: str, heads: int, q_start: int = 0, q_end: int | None = None):
        full = q_start == 0 and (q_end is None or q_end == vis.doc.shape[1])
        self.backend = backend if full else "sdpa"
        if self.backend == "sdpa":
            self.data = vis.dense_mask(q_start, q_end)
        elif self.backend == "flex":
            self.data = flex_block_mask(vis)
        elif self.backend == "xformers":
            self.data = xformers_bias(vis, heads)
        else:
            raise ValueError(f"unknown attention backend {backend!r}; resolve 'auto' with resolve_backend()")

    def attend(self, q, k, v) -> torch.Tensor:
        """Attention of q (B, H, Tq, D) over k, v (B, Hkv, Tk, D); Hkv may divide H (grouped queries)."""
        if self.backend == "sdpa":
            return F.scaled_dot_product_attention(
                q, k, v, attn_mask=self.data, enable_gqa=k.shape[1] != q.shape[1]
            )
        if self.backend == "flex":
            return flex_attention(q, k, v, self.data)
        if k.shape[1] != q.shape[1]:
            repeat = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(repeat, 1), v.repeat_interleave(repeat, 1)
        return xformers_attention(q, k, v, self.data)


def available_backends(device: torch.device | str) -> list[str]:
    """Backends that can train on `device`, fastest first."""
    device = torch.device(device)
    found = []
    if device.type == "cuda":
        try:
            from torch.nn.attention.flex_attention import flex_attention as _  # noqa: F401

            found.append("flex")
        except ImportError:
            pass
        try:
            import xformers.ops  # noqa: F401

            found.append("xformers")
        except ImportError:
            pass
    found.append("sdpa")
    return found


def resolve_backend(name: str, device: torch.device | str) -> str:
    """`auto` -> the fastest available backend; a named one is checked to be usable here."""
    if name not in BACKENDS:
        raise ValueError(f"attention backend must be one of {BACKENDS}, got {name!r}")
    usable = available_backends(device)
    if name == "auto":
        return usable[0]
    if name not in usable:
        raise ValueError(
            f"attention backend {name!r} is not usable on {device} (usable: {usable}); use 'sdpa' or 'auto'"
        )
    return name
