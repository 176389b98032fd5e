"""The token grammar: every task's template, defined once, for training documents and prompts alike.

    t2i      <t2i> <bos> caption <eos> <boi> | image | <eoi>          loss on the image codes
    caption  <mmu> <boi> image <eoi> <bos> | caption <eos>             loss on the caption and eos
    vqa      <vqa> <boi> image <eoi> <bos> question <sep> | answer <eos>
    lm       <lm> <bos> | text <eos>

Left of `|` is the prompt a sampler is given; right of it, what the model learns to produce (the
loss), and after a second `|`, tokens that close the document without a loss. A training
document (`Grammar.document`) and an inference prompt (`Grammar.prompt`) are both rendered from
these templates, so they cannot drift apart; `Grammar.overhead` is what a template adds around
its text and image. Adding a task means adding one template here.

`lay_out` is the one function that turns documents placed in rows into what the model reads
besides the tokens: rotary positions (0 at each document's first token), each image token's
index inside its image, the omni-attention vectors (`omni.attention`), and which positions an
understanding encoder fills (`read_at`). Packing (training)
and the samplers (left-padded prompts plus the positions they generate) both call it.

Slot contents are token ids (text already encoded by the caller, images as VQ codes); this
module knows the vocabulary, not the text tokenizer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from omni.attention import Segment, Visibility, build_visibility
from omni.vocab import Vocab

IGNORE = -100  # target of positions without a loss

# The templates. A part is a special token's short name (omni.vocab.SPECIALS) or a slot `$name`;
# `$image` is an image block. (prompt, answer, closing)
TEMPLATES: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "t2i": (("t2i", "bos", "$caption", "eos", "boi"), ("$image",), ("eoi",)),
    "caption": (("mmu", "boi", "$image", "eoi", "bos"), ("$caption", "eos"), ()),
    "vqa": (("vqa", "boi", "$image", "eoi", "bos", "$question", "sep"), ("$answer", "eos"), ()),
    "lm": (("lm", "bos"), ("$text", "eos"), ()),
}
TASKS = tuple(TEMPLATES)


@dataclass
class Document:
    """One training document: tokens with aligned targets (IGNORE: no loss), and its image block."""

    task: str
    tokens: list[int]
    targets: list[int]
    image: tuple[int, int] | None = None  # [start, end) of the image codes within the document
    key: str = ""
    causal_image: bool = False  # the image block is generated raster-order (ar-mode t2i)
    pixels: torch.Tensor | None = None  # (3, R, R) of an image that is read, for an understanding encoder

    def __len__(self) -> int:
        return len(self.tokens)

    def masked(self, positions: Sequence[int], mask_id: int) -> Document:
        """Mask-mode t2i: the image tokens at `positions` become <mask>, each the target of its
        own position; nothing else has a loss."""
        tokens, targets = list(self.tokens), [IGNORE] * len(self.tokens)
        for p in positions:
            targets[p], tokens[p] = tokens[p], mask_id
        return Document(self.task, tokens, targets, self.image, self.key, False, self.pixels)


@dataclass
class Prompt:
    """Token ids of one prompt and the [start, end) of each image block in it (all read:
    bidirectional inside, like a read image in training)."""

    ids: list[int]
    images: list[tuple[int, int]] = field(default_factory=list)
    pixels: list[torch.Tensor] = field(default_factory=list)
    """(3, R, R) of the first len(pixels) images, for a model that reads them with an understanding
    encoder; the others are read as their codes."""

    def __post_init__(self):
        if len(self.pixels) > len(self.images):
            raise ValueError(f"{len(self.pixels)} pixel tensors for {len(self.images)} image blocks")


@dataclass
class Grammar:
    """The templates over one vocabulary."""

    vocab: Vocab

    def _render(self, parts: Sequence[str], slots: dict, at: int) -> tuple[list[int], tuple[int, int] | None]:
        """Ids of `parts` with their slots filled, and where the image went (offset by `at`)."""
        ids, image = [], None
        for part in parts:
            if part == "$image":
                image = (at + len(ids), at + len(ids) + len(slots["image"]))
                ids += [self.vocab.image_offset + int(c) for c in slots["image"]]
            elif part.startswith("$"):
                ids += list(slots[part[1:]])
            else:
                ids.append(self.vocab.special(part))
        return ids, image

    def prompt(self, task: str, answer_start: Sequence[int] = (), pixels=None, **slots) -> Prompt:
        """The prompt of `task` (what a sampler continues), its slots filled: text slots as token
        ids, `image` as VQ codes. `answer_start` is the beginning of the answer, for the model to
        continue (lm: the text whose continuation is wanted). `pixels` (3, R, R): the image's, for
        a model that reads images with an understanding encoder."""
        ids, image = self._render(template(task)[0], slots, 0)
        pixels = self._read(task, pixels)
        return Prompt(ids + list(answer_start), [image] if image else [], [] if pixels is None else [pixels])

    def document(self, task: str, key: str = "", causal_image: bool = True, pixels=None, **slots) -> Document:
        """The training document of `task`: the prompt, then the answer with next-token targets
        (each position predicts the next token), then the closing tokens without a loss.

        `causal_image` marks a generated image block as raster-order (ar mode); for mask mode
        call `Document.masked` on the result. `pixels` (3, R, R) go with an image that is read
        (in the prompt), for a model with an understanding encoder."""
        prompt_parts, answer_parts, closing = template(task)
        prompt, image = self._render(prompt_parts, slots, 0)
        answer, answer_image = self._render(answer_parts, slots, len(prompt))
        tail, _ = self._render(closing, slots, 0)
        tokens = prompt + answer + tail
        targets = [IGNORE] * len(tokens)
        for i in range(len(prompt), len(prompt) + len(answer)):
            targets[i - 1] = tokens[i]
        generated = answer_image is not None
        return Document(
            task,
            tokens,
            targets,
            image or answer_image,
            key,
            causal_image and generated,
            self._read(task, pixels),
        )

    @staticmethod
    def _read(task: str, pixels):
        """`pixels`, checked to belong to an image that `task` reads (one in its prompt)."""
        if pixels is not None and "$image" not in template(task)[0]:
            raise ValueError(f"task {task!r} reads no image: its image is generated, so it takes no pixels")
        return pixels

    @staticmethod
    def overhead(task: str) -> int:
        """Tokens the template of `task` adds around its text and image slots."""
        return sum(not part.startswith("$") for parts in template(task) for part in parts)

    def text_room(self, task: str, max_seq_len: int, image_tokens: int, answer: int = 1) -> int:
        """How many prompt text tokens fit in `max_seq_len` beside the template, its image (if it
        has one) and `answer` tokens of a text answer."""
        has_image = any("$image" in parts for parts in template(task))
        text_answer = any(p.startswith("$") and p != "$image" for p in template(task)[1])
        return max_seq_len - self.overhead(task) - image_tokens * has_image - answer * text_answer

    def parts(self, ids: Sequence[int]) -> list[tuple[str, list[int]]]:
        """Generated ids split into their parts in order: ("text", text ids) and ("image", VQ codes)
        for each `<boi> codes <eoi>` block; ValueError for a block that is not closed."""
        boi, eoi = self.vocab.special("boi"), self.vocab.special("eoi")
        parts: list[tuple[str, list[int]]] = []
        i = 0
        while i < len(ids):
            if ids[i] == boi:
                end = list(ids).index(eoi, i) if eoi in ids[i:] else -1
                if end < 0:
                    raise ValueError(f"an image block opened at {i} is not closed by <eoi>")
                parts.append(("image", [int(self.vocab.codes(t)) for t in ids[i + 1 : end]]))
                i = end + 1
            else:
                end = next((j for j in range(i, len(ids)) if ids[j] == boi), len(ids))
                parts.append(("text", list(ids[i:end])))
                i = end
        return parts

    def guided_t2i_prompts(self, captions: Sequence[list[int]], guidance: float) -> list[Prompt]:
        """t2i prompts of the captions, followed (with guidance > 0) by as many empty-caption ones:
        the unconditional half that classifier-free guidance needs (trained by caption dropout)."""
        prompts = [self.prompt("t2i", caption=c) for c in captions]
        return prompts + [self.prompt("t2i", caption=[])] * len(captions) if guidance > 0 else prompts


def template(task: str) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    try:
        return TEMPLATES[task]
    except KeyError:
        raise ValueError(f"unknown task {task!r}; tasks: {TASKS}") from None


# ----------------------------------------------------------------------------------------------
# Layout: documents in rows -> positions, image indices, visibility


@dataclass
class Placed:
    """A document placed in a row: positions [start, end), and its image blocks as absolute
    (start, end, bidirectional)."""

    start: int
    end: int
    images: list[tuple[int, int, bool]] = field(default_factory=list)
    reads: list[tuple[int, int]] = field(default_factory=list)
    """Of those blocks, the (start, end) of images read by an understanding encoder (from pixels)."""


@dataclass
class Layout:
    """What the model reads besides the tokens, for a batch of rows of `length` positions."""

    positions: torch.Tensor  # (B, length) rotary positions, 0 at each document's first token
    image_index: torch.Tensor  # (B, length) index of each position inside its image block, else -1
    vis: Visibility  # omni-attention over (B, length)
    read_at: torch.Tensor  # (B, length) bool: positions of images an understanding encoder reads

    def to(self, device) -> Layout:
        return Layout(
            self.positions.to(device),
            self.image_index.to(device),
            self.vis.to(device),
            self.read_at.to(device),
        )


def lay_out(rows: Sequence[Sequence[Placed]], length: int) -> Layout:
    """The layout of rows of placed documents; positions no document covers are padding
    (omni.attention: each sees only itself)."""
    positions = torch.zeros((len(rows), length), dtype=torch.long)
    image_index = torch.full((len(rows), length), -1, dtype=torch.long)
    read_at = torch.zeros((len(rows), length), dtype=torch.bool)
    segments = []
    for r, docs in enumerate(rows):
        segs = []
        for d, doc in enumerate(docs):
            positions[r, doc.start : doc.end] = torch.arange(doc.end - doc.start)
            for s, e in doc.reads:
                read_at[r, s:e] = True
            cuts = {doc.start, doc.end}
            for s, e, _ in doc.images:
                image_index[r, s:e] = torch.arange(e - s)
                cuts |= {s, e}
            blocks = {(s, e): bidirectional for s, e, bidirectional in doc.images}
            edges = sorted(cuts)
            for s, e in zip(edges, edges[1:]):
                image = (s, e) in blocks
                segs.append(Segment(s, e, d, image=image, bidirectional=blocks.get((s, e), True)))
        segments.append(segs)
    return Layout(positions, image_index, build_visibility(segments, length), read_at)
