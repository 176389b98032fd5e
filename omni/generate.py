"""Samplers as plain functions over a `Transformer` and its `Vocab` (gpt-fast style).

    texts = generate_text(model, vocab, prompts, max_new_tokens=32)          # captions, answers, text
    codes = generate_images_mask(model, vocab, captions, grid=64, steps=12)  # MaskGIT / Show-o
    codes = generate_images_ar(model, vocab, captions, grid=64)              # raster, KV-cached
    codes = generate_images_ar(model, vocab, captions, grid=64, compile=True)  # same codes, faster steps

Prompts come from the token grammar (`omni.grammar.Grammar.prompt`): token ids, optionally with
image blocks, `Prompt(ids, images=[(start, end, bidirectional)])`.
A batch of prompts of different lengths is left-padded; padding positions are their own
documents (omni.attention), so they never influence real tokens, and rotary positions start at
0 at each prompt's first real token. Decoding is constrained: text decoding may emit only text
ids and <eos>; image generation only image codes. Classifier-free guidance runs the conditional
and unconditional (empty caption) prompts in one doubled batch.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from omni.checks import check_number
from omni.grammar import Grammar, Placed, Prompt, lay_out
from omni.model import KVCache, Transformer
from omni.vocab import Vocab

# Sampling defaults written into a release's config.json ("generation"); calls override them.
GENERATION_DEFAULTS = {
    "mask_steps": 12,  # parallel decoding steps of mask-mode image generation
    "guidance_scale": 2.0,  # classifier-free guidance
    "temperature": 1.0,  # image sampling
    "text_temperature": 0.0,  # text decoding: greedy
    "top_k": 0,
    "max_new_tokens": 48,  # text decoding
}
# What each of them may be (omni.checks.check_number): NaN, inf or a negative guidance would
# otherwise fail deep inside torch.
GENERATION_RULES = {
    "mask_steps": dict(at_least=1, integer=True),
    "guidance_scale": dict(at_least=0.0),
    "temperature": dict(at_least=0.0),
    "text_temperature": dict(at_least=0.0),
    "top_k": dict(at_least=0, integer=True),
    "max_new_tokens": dict(at_least=1, integer=True),
}


def check_generation(options: dict, where: str = "generation") -> dict:
    """The sampling options checked against GENERATION_RULES (other keys pass); ValueError naming one."""
    for name, rule in GENERATION_RULES.items():
        if name in options:
            check_number(f"{where}.{name}", options[name], **rule)
    return options


@dataclass
class Batch:
    """Left-padded prompts laid out for a sequence of `length` positions (prompt + generation)."""

    tokens: torch.Tensor  # (B, P) padded prompt ids
    positions: torch.Tensor  # (B, length) rotary positions, 0 at each prompt's first token
    image_index: torch.Tensor  # (B, length) index of each position inside its image block, else -1
    vis: object  # omni.attention.Visibility over (B, length)
    pad: list[int]  # left padding of each row
    read_pixels: torch.Tensor | None = None  # (N, 3, R, R) of the prompts' images an encoder reads
    read_at: torch.Tensor | None = None  # (B, length) their blocks' positions (Transformer.forward)


def layout(
    prompts: Sequence[Prompt],
    new_tokens: int,
    pad_id: int,
    new_image: tuple[int, int] | None = None,
    bidirectional: bool = True,
    device=None,
    width_multiple: int = 1,
    max_length: int | None = None,
) -> Batch:
    """Left-pad prompts; each row is one document: its prompt, then the `new_tokens` to generate.

    `new_image` marks a block [start, end) of the generated part (relative to its first position)
    as an image, bidirectional in mask mode; an image inside a prompt is read (bidirectional).
    `width_multiple` pads the prompts to a multiple of it, so that batches of similar prompts share
    one shape (a compiled step is traced once per shape), never beyond `max_length` in all.
    Prompts that carry `pixels` (for a model with an understanding encoder) give `read_pixels` and
    `read_at`.
    """
    width = max(len(p.ids) for p in prompts)
    padded = -(-width // width_multiple) * width_multiple
    width = max(width, min(padded, max_length - new_tokens)) if max_length else padded
    length = width + new_tokens
    tokens = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    rows, pads, pixels = [], [], []
    for row, p in enumerate(prompts):
        pad = width - len(p.ids)
        pads.append(pad)
        tokens[row, pad:] = torch.tensor(p.ids, dtype=torch.long)
        images = [(pad + start, pad + end, both) for start, end, both in p.images]
        reads = [(pad + start, pad + end) for start, end, _ in p.images[: len(p.pixels)]]
        pixels += p.pixels
        if new_image is not None:
            images.append((width + new_image[0], width + new_image[1], bidirectional))
        rows.append([Placed(pad, length, images, reads)])
    laid = lay_out(rows, length).to(device)
    reads = (torch.stack(pixels).to(device), laid.read_at) if pixels else (None, None)
    return Batch(tokens.to(device), laid.positions, laid.image_index, laid.vis, pads, *reads)


def seeded_generator(seed: int, device: torch.device | str) -> torch.Generator:
    """A random generator on `device`, seeded: the samplers draw on the model's device, so the same
    seed gives the same samples on that device (CPU and CUDA streams differ from each other)."""
    return torch.Generator(device=torch.device(device)).manual_seed(seed)


def check_generator(generator: torch.Generator | None, device: torch.device) -> None:
    """A clear error for a generator on another device than the model (torch's is cryptic)."""
    if generator is None:
        return
    theirs, ours = torch.device(generator.device), torch.device(device)
    if theirs.type != ours.type or (
        theirs.index is not None and ours.index is not None and theirs.index != ours.index
    ):
        raise ValueError(
            f"the random generator is on {theirs} but the model on {ours}: the samplers draw on the "
            f"model's device; make it with omni.generate.seeded_generator(seed, {str(ours)!r})"
        )


def sample(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Token ids (B,) from logits (B, V): greedy at temperature 0, else top-k / top-p sampling."""
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k > 0:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop = cumulative - sorted_logits.softmax(-1) > top_p  # keep the first token past top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    return draw(logits.softmax(-1), generator)


def draw(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One index per row of `probs` (..., V), with those probabilities, by inverting the
    cumulative sum at one uniform number per row: torch.multinomial draws V exponential numbers
    per row, a quarter of a step's time when a small model samples a 647-token vocabulary."""
    cdf = probs.float().cumsum(-1)
    # u in (0, 1] times the row's own total: never an index past the end, never a zero-probability one.
    u = 1.0 - torch.rand(cdf.shape[:-1] + (1,), generator=generator, device=cdf.device)
    return torch.searchsorted(cdf, u * cdf[..., -1:]).squeeze(-1)


def _restrict(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    return logits.masked_fill(~allowed, float("-inf"))


@torch.no_grad()
def generate_text(
    model: Transformer,
    vocab: Vocab,
    prompts: Sequence[Prompt],
    max_new_tokens: int = 32,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    compile: bool = False,
    allowed: torch.Tensor | None = None,
) -> list[list[int]]:
    """Continue each prompt with text until <eos> (excluded from the result) or `max_new_tokens`.

    `allowed` (V,) bool: the ids decoding may emit (default: plain text and <eos>; grounded text
    adds the location tokens, a box is location tokens alone). With `use_cache=False` every step
    recomputes the whole prefix (the reference the KV-cached path is tested against);
    `compile=True` runs each step compiled (`Decoder`).
    """
    device = model.output.weight.device
    allowed = vocab.text_id_mask(device) if allowed is None else allowed.to(device)
    allowed = allowed.expand(len(prompts), -1)
    eos = vocab.special("eos")
    rows = _continue(
        model, vocab, prompts, [max_new_tokens] * len(prompts), allowed, {eos},
        temperature, top_k, top_p, generator, use_cache, compile,
    )  # fmt: skip
    return [row[:-1] if row and row[-1] == eos else row for row in rows]


def _continue(
    model: Transformer,
    vocab: Vocab,
    prompts: Sequence[Prompt],
    limits: Sequence[int],
    allowed: torch.Tensor,
    stops: set[int],
    temperature: float,
    top_k: int,
    top_p: float,
    generator: torch.Generator | None,
    use_cache: bool = True,
    compile: bool = False,
) -> list[list[int]]:
    """Decode each prompt one token at a time, only ids that `allowed` (B, V) permits, until it
    emits one of `stops` (kept at the end of its row) or `limits` tokens."""
    device = model.output.weight.device
    check_generator(generator, device)
    steps = max(limits)
    batch = layout(
        prompts, steps, vocab.special("pad"), device=device,
        width_multiple=COMPILED_WIDTH_MULTIPLE if compile else 1, max_length=model.config.max_seq_len,
    )  # fmt: skip
    stop_ids = torch.tensor(sorted(stops), device=device)
    limits_t = torch.tensor(list(limits), device=device)
    decoder = Decoder(model, batch, use_cache, compile)
    logits = decoder.prefill()
    done = limits_t <= 0
    rows: list[list[int]] = [[] for _ in prompts]
    for step in range(steps):
        nxt = sample(_restrict(logits, allowed), temperature, top_k, top_p, generator)
        for row in (~done).nonzero().flatten().tolist():
            rows[row].append(int(nxt[row]))
        done |= torch.isin(nxt, stop_ids) | (limits_t <= step + 1)
        if done.all():
            break
        # A finished row is fed a stop id: its later positions influence nothing that is kept.
        nxt = torch.where(done, stop_ids[0], nxt)
        logits = decoder.step(nxt[:, None], decoder.width + step)[:, -1]
    return rows


# A compiled step pads its prompts to a multiple of this, so that prompts of nearby lengths share
# one traced shape (each new shape costs a compilation).
COMPILED_WIDTH_MULTIPLE = 16


class Decoder:
    """The forward passes of one batch's generation: the prompts once, then steps that give the
    logits of new tokens at given positions, in one of three ways:

    * `use_cache=False`: every step recomputes the whole sequence so far (the reference);
    * `use_cache=True`: the prompt's and past steps' keys and values come from a KV cache;
    * `compile=True` (with the cache): each step is `Transformer.decode_step`, whose shapes never
      change within a batch, compiled once (gpt-fast); where compiling fails (no C++ compiler,
      an unsupported platform) it warns once and runs the same step uncompiled.
    """

    def __init__(self, model: Transformer, batch: Batch, use_cache: bool = True, compile: bool = False):
        self.model, self.batch = model, batch
        self.width = batch.tokens.shape[1]
        length = batch.positions.shape[1]
        weight = model.output.weight
        self.cache = (
            KVCache(model.config, batch.tokens.shape[0], length, weight.device, weight.dtype)
            if use_cache or compile
            else None
        )
        self.seq = None if self.cache is not None else torch.cat(
            [batch.tokens, batch.tokens.new_zeros(batch.tokens.shape[0], length - self.width)], dim=1
        )  # fmt: skip
        self.static = None
        if compile:
            # What the compiled step reads of the whole sequence, made once per batch.
            rope = model.rotary(batch.positions, batch.image_index)
            self.static = (rope, batch.image_index, batch.vis.dense_mask())

    def prefill(self) -> torch.Tensor:
        """Run the prompts (into the cache, if any); the logits (B, V) of their last positions."""
        b = self.batch
        return self.model(
            b.tokens, b.vis, positions=b.positions[:, : self.width], cache=self.cache,
            image_index=b.image_index[:, : self.width], read_pixels=b.read_pixels,
            read_at=None if b.read_at is None else b.read_at[:, : self.width],
        )[:, -1]  # fmt: skip

    def step(self, tokens: torch.Tensor, start: int) -> torch.Tensor:
        """Logits (B, T, V) of `tokens` (B, T) placed at positions [start, start+T), which follow
        the prompt and the tokens of earlier steps (a later step may place tokens again at the
        same positions: mask mode redraws its image block)."""
        end = start + tokens.shape[1]
        b = self.batch
        if self.static is not None:
            input_pos = torch.arange(start, end, device=tokens.device)
            return _run_compiled_step(self.model, tokens, input_pos, self.cache, *self.static)
        if self.cache is not None:
            return self.model(
                tokens, b.vis, positions=b.positions[:, start:end], cache=self.cache, start=start,
                image_index=b.image_index[:, start:end],
            )  # fmt: skip
        self.seq[:, start:end] = tokens
        out = self.model(
            self.seq[:, :end], b.vis, positions=b.positions[:, :end], image_index=b.image_index[:, :end],
            read_pixels=b.read_pixels, read_at=None if b.read_at is None else b.read_at[:, :end],
        )  # fmt: skip
        return out[:, start:]


_compiled_decode_step = None
_compile_failed: str | None = None


def _run_compiled_step(model: Transformer, *args) -> torch.Tensor:
    """`model.decode_step(*args)`, compiled; uncompiled (with one warning) where compiling fails."""
    global _compiled_decode_step, _compile_failed
    if _compile_failed is None:
        if _compiled_decode_step is None:
            # The unbound method: one compiled function for every model (no reference kept to any).
            _compiled_decode_step = torch.compile(Transformer.decode_step, dynamic=False)
        try:
            return _compiled_decode_step(model, *args)
        except torch._dynamo.exc.BackendCompilerFailed as e:  # the compiler, not the inputs, failed
            _compile_failed = str(e).strip().splitlines()[0]
            warnings.warn(
                f"torch.compile does not work here ({_compile_failed}); sampling runs the same "
                "static-shape step uncompiled",
                stacklevel=3,
            )
    return model.decode_step(*args)


def _checked_initial(initial: torch.Tensor | None, n: int, grid: int, vocab: Vocab) -> torch.Tensor | None:
    """`initial` codes as (n, grid) longs with -1 or a code in [0, codebook_size), else a clear error."""
    if initial is None:
        return None
    if tuple(initial.shape) != (n, grid):
        raise ValueError(
            f"initial codes must be (captions, grid) = ({n}, {grid}), got {tuple(initial.shape)}"
        )
    initial = initial.long()
    if initial.numel() and (initial.min() < -1 or initial.max() >= vocab.codebook_size):
        raise ValueError(f"initial codes must be -1 (generate) or in [0, {vocab.codebook_size}) (keep)")
    return initial


def mask_schedule(step: int, steps: int) -> float:
    """Fraction of the image still masked after `step` (0-based) of `steps`: cos(pi/2 * (step+1)/steps)."""
    return math.cos(math.pi / 2 * (step + 1) / steps)


def _guided(logits: torch.Tensor, n: int, guidance: float) -> torch.Tensor:
    """Combine the conditional first half and unconditional second half of a doubled batch."""
    if guidance <= 0:
        return logits[:n]
    cond, uncond = logits[:n], logits[n:]
    return uncond + (1 + guidance) * (cond - uncond)


@torch.no_grad()
def generate_images_mask(
    model: Transformer,
    vocab: Vocab,
    captions: Sequence[list[int]],
    grid: int,
    steps: int = 12,
    guidance: float = 2.0,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    initial: torch.Tensor | None = None,
    use_cache: bool = True,
    compile: bool = False,
) -> torch.Tensor:
    """VQ codes (B, grid) by iterative parallel decoding (MaskGIT): all masked, then unmask by confidence.

    `initial` (B, grid) gives known codes with -1 where a code is to be generated (inpainting).
    Guidance > 0 adds an unconditional (empty caption) copy of the batch. The prompt sees nothing
    after it (omni-attention), so its keys and values are computed once and kept in a KV cache;
    each step runs only the image block (<eoi> after it changes nothing the block sees).
    `use_cache=False` recomputes the whole sequence at every step (the reference the cached path
    is tested against); `compile=True` runs each step compiled (`Decoder`).
    """
    prompts = Grammar(vocab).guided_t2i_prompts(captions, guidance)
    return images_mask(
        model, vocab, prompts, grid, steps, guidance, temperature, generator, initial, use_cache, compile
    )


def images_mask(
    model: Transformer,
    vocab: Vocab,
    prompts: Sequence[Prompt],
    grid: int,
    steps: int = 12,
    guidance: float = 2.0,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    initial: torch.Tensor | None = None,
    use_cache: bool = True,
    compile: bool = False,
) -> torch.Tensor:
    """`generate_images_mask` after any prompts that end where an image block begins (after
    <boi>): n conditional prompts, then (with guidance > 0) n unconditional ones."""
    device = model.output.weight.device
    check_generator(generator, device)
    n = len(prompts) // 2 if guidance > 0 else len(prompts)
    batch = layout(
        prompts, grid, vocab.special("pad"), new_image=(0, grid), device=device,
        width_multiple=COMPILED_WIDTH_MULTIPLE if compile else 1, max_length=model.config.max_seq_len,
    )  # fmt: skip
    decoder = Decoder(model, batch, use_cache, compile)
    if decoder.cache is not None:
        decoder.prefill()  # the prompt's keys and values, once
    mask_id = vocab.special("mask")
    initial = _checked_initial(initial, n, grid, vocab)
    codes = (
        torch.full((n, grid), -1, dtype=torch.long, device=device)
        if initial is None
        else initial.to(device).clone()
    )
    unknown = codes < 0
    total_unknown = unknown.sum(-1, keepdim=True)
    image_ids = vocab.image_id_mask(device)
    for step in range(steps):
        image = torch.where(codes >= 0, vocab.image_ids(codes), torch.full_like(codes, mask_id))
        if guidance > 0:
            image = torch.cat([image, image])
        logits = decoder.step(image, decoder.width)  # (B', grid, V)
        logits = _restrict(_guided(logits, n, guidance), image_ids)  # guide first: -inf - -inf is NaN
        probs = (logits.float() / max(temperature, 1e-6)).softmax(-1)
        drawn = draw(probs, generator)  # (n, grid)
        confidence = probs.gather(-1, drawn[..., None]).squeeze(-1).log()
        drawn = vocab.codes(drawn)
        masked = codes < 0
        # Annealed noise (MaskGIT): early steps explore, the last ones pick by confidence alone.
        noise = -torch.log(
            -torch.log(torch.rand(confidence.shape, generator=generator, device=device).clamp_min(1e-20))
        )
        confidence = confidence + temperature * (1 - (step + 1) / steps) * noise
        confidence = confidence.masked_fill(~masked, float("inf"))
        keep_masked = (total_unknown * mask_schedule(step, steps)).floor().long()  # (n, 1)
        keep_masked = torch.minimum(keep_masked, masked.sum(-1, keepdim=True) - 1).clamp_min(0)
        if step == steps - 1:
            keep_masked.zero_()
        order = confidence.argsort(dim=-1)  # least confident first
        rank = order.argsort(dim=-1)
        still = (rank < keep_masked) & masked
        codes = torch.where(masked & ~still, drawn, codes)
    return codes


@torch.no_grad()
def generate_images_ar(
    model: Transformer,
    vocab: Vocab,
    captions: Sequence[list[int]],
    grid: int,
    guidance: float = 2.0,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    initial: torch.Tensor | None = None,
    compile: bool = False,
) -> torch.Tensor:
    """VQ codes (B, grid) in raster order, one token per step with a KV cache (ar mode).

    `initial` (B, grid) gives known codes with -1 where a code is to be generated (inpainting):
    known codes are fed in place of samples, so a generated code sees the known ones before it
    in raster order (not those after it; mask mode sees both). `use_cache=False` recomputes the
    whole sequence at every step; `compile=True` runs each step compiled (`Decoder`).
    """
    prompts = Grammar(vocab).guided_t2i_prompts(captions, guidance)
    return images_ar(
        model,
        vocab,
        prompts,
        grid,
        guidance,
        temperature,
        top_k,
        top_p,
        generator,
        use_cache,
        initial,
        compile,
    )


def images_ar(
    model: Transformer,
    vocab: Vocab,
    prompts: Sequence[Prompt],
    grid: int,
    guidance: float = 2.0,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    initial: torch.Tensor | None = None,
    compile: bool = False,
) -> torch.Tensor:
    """`generate_images_ar` after any prompts that end where an image block begins (after
    <boi>): n conditional prompts, then (with guidance > 0) n unconditional ones."""
    device = model.output.weight.device
    check_generator(generator, device)
    n = len(prompts) // 2 if guidance > 0 else len(prompts)
    batch = layout(
        prompts, grid, vocab.special("pad"), new_image=(0, grid), bidirectional=False, device=device,
        width_multiple=COMPILED_WIDTH_MULTIPLE if compile else 1, max_length=model.config.max_seq_len,
    )  # fmt: skip
    image_ids = vocab.image_id_mask(device)
    decoder = Decoder(model, batch, use_cache, compile)
    logits = decoder.prefill()
    known = _checked_initial(initial, n, grid, vocab)
    known = None if known is None else known.to(device)
    out = []
    for i in range(grid):
        nxt = sample(_restrict(_guided(logits, n, guidance), image_ids), temperature, top_k, top_p, generator)
        if known is not None:
            nxt = torch.where(known[:, i] >= 0, vocab.image_ids(known[:, i]), nxt)
        out.append(nxt)
        if i == grid - 1:
            break
        fed = torch.cat([nxt, nxt]) if guidance > 0 else nxt
        logits = decoder.step(fed[:, None], decoder.width + i)[:, -1]
    return vocab.codes(torch.stack(out, dim=1))


@torch.no_grad()
def generate_interleaved(
    model: Transformer,
    vocab: Vocab,
    prompts: Sequence[Prompt],
    grid: int,
    image_generation: str,
    max_new_tokens: int = 256,
    text_temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    mask_steps: int = 12,
    guidance: float = 2.0,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
) -> list[list[int]]:
    """Continue each prompt with text and images in any order, as the model chooses (Chameleon):
    text decoding may emit <boi>, and that row then gets one image block of `grid` codes by the
    model's own `image_generation` ("mask" or "ar", guided against the empty-caption t2i prompt
    with `guidance` > 0), closed by <eoi>, and goes on with text; until <eos> (excluded) or
    `max_new_tokens` tokens in all (images included) or the model's `max_seq_len`.

    Rows switch on their own: a text phase decodes every row until it emits <boi> or <eos>, then
    one image phase draws the images of the rows that asked; every <boi> is closed (<boi> is only
    allowed while the block and its <eoi> still fit). Returns each row's new ids (split them with
    `Grammar.parts`); each phase runs the row's whole sequence so far again as its prompt.
    """
    if image_generation not in ("mask", "ar"):
        raise ValueError(f"image_generation must be 'mask' or 'ar', got {image_generation!r}")
    device = model.output.weight.device
    check_generator(generator, device)
    eos, boi, eoi = (vocab.special(name) for name in ("eos", "boi", "eoi"))
    text_or_boi = vocab.text_id_mask(device)
    text_or_boi[boi] = True
    text_only = vocab.text_id_mask(device)
    contexts = [Prompt(list(p.ids), list(p.images), list(p.pixels)) for p in prompts]
    out: list[list[int]] = [[] for _ in prompts]
    done = [False] * len(prompts)
    image_block = grid + 1  # the codes and <eoi> that follow a <boi>
    while True:
        room = [
            min(max_new_tokens - len(o), model.config.max_seq_len - len(c.ids)) for o, c in zip(out, contexts)
        ]
        done = [d or r <= 0 for d, r in zip(done, room)]
        active = [i for i, d in enumerate(done) if not d]
        if not active:
            return out
        phase = model.config.max_seq_len - max(len(contexts[i].ids) for i in active)
        # Text may run up to where an image still fits after it; past that, text only.
        draws = [room[i] > image_block for i in active]
        limits = [min(phase, room[i] - image_block if can else room[i]) for i, can in zip(active, draws)]
        allowed = torch.stack([text_or_boi if can else text_only for can in draws])
        rows = _continue(
            model, vocab, [contexts[i] for i in active], limits, allowed, {eos, boi},
            text_temperature, top_k, top_p, generator, use_cache,
        )  # fmt: skip
        wants_image = []
        for i, row in zip(active, rows):
            if row and row[-1] == eos:
                row, done[i] = row[:-1], True
            contexts[i].ids += row
            out[i] += row
            if row and row[-1] == boi:
                wants_image.append(i)
        if not wants_image:
            continue
        conditional = [contexts[i] for i in wants_image]
        unconditional = [Grammar(vocab).prompt("t2i", caption=[])] * len(conditional) if guidance > 0 else []
        if image_generation == "mask":
            codes = images_mask(
                model,
                vocab,
                conditional + unconditional,
                grid,
                mask_steps,
                guidance,
                temperature,
                generator,
                None,
                use_cache,
            )
        else:
            codes = images_ar(
                model,
                vocab,
                conditional + unconditional,
                grid,
                guidance,
                temperature,
                top_k,
                top_p,
                generator,
                use_cache,
            )
        for i, row_codes in zip(wants_image, vocab.image_ids(codes).tolist()):
            start = len(contexts[i].ids)
            contexts[i].ids += row_codes + [eoi]
            contexts[i].images.append((start, start + grid, image_generation == "mask"))  # as generated
            out[i] += row_codes + [eoi]
