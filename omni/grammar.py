"""The token grammar: every task's template, defined once, for training documents and prompts alike.

    t2i      <t2i> <bos> caption <eos> <boi> | image | <eoi>          loss on the image codes
    caption  <mmu> <boi> image <eoi> <bos> | caption <eos>             loss on the caption and eos
    vqa      <vqa> <boi> image <eoi> <bos> question <sep> | answer <eos>
    lm       <lm> <bos> | text <eos>

    chat     <chat> <bos> user <sep> | assistant <eos> | <bos> user <sep> | assistant <eos> ...

  with location tokens (a vocabulary built with `locations`; boxes are four `<loc_i>`, omni.grounding):
    gcap     <gcap> <boi> image <eoi> <bos> | grounded caption <eos>      each name followed by its box
    ground   <ground> <boi> image <eoi> <bos> phrase <sep> | box <eos>   referring expression
    region   <region> <boi> image <eoi> <bos> box <sep> | phrase <eos>   what is in a box
    plan     <plan> <bos> caption <sep> | layout <eos> <boi> image | <eoi>   layout-first text to image
    gvqa     <vqa> <boi> image <eoi> <bos> question <ground> | objects <sep> answer <eos>
             a grounded answer: the objects the question names, with their boxes, then the answer

A `plan` document writes the layout (the names with their boxes) before the image, so a sampler
draws the plan first and then the image conditioned on it, or takes a user's layout instead.
With `text_first` (a model's `text_first`), the tasks that ask something of an image they read
(vqa, gvqa, ground, region) put the question before the image: `<vqa> <bos> question <sep> <boi> image
<eoi> | answer <eos>`, so the image's tokens, bidirectional among themselves, also see the question.

Left of `|` is the prompt a sampler is given; right of it, what the model learns to produce (the
loss), and after a second `|`, tokens that close the document without a loss. A conversation
(`chat`, `Grammar.chat_document` / `chat_prompt`) has turns of any number of parts, text and
images `<boi> codes <eoi>` in any order: the loss is on the assistant's turns (its text, its
<boi>, its images' codes, its <eos>; not <eoi>, which the sampler writes itself). A user's images
are read (bidirectional); the assistant's are generated like a t2i image (causal in ar mode; in
mask mode bidirectional, with a cosine-drawn fraction masked). A training
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
    "gcap": (("gcap", "boi", "$image", "eoi", "bos"), ("$caption", "eos"), ()),
    "ground": (("ground", "boi", "$image", "eoi", "bos", "$phrase", "sep"), ("$box", "eos"), ()),
    "region": (("region", "boi", "$image", "eoi", "bos", "$box", "sep"), ("$phrase", "eos"), ()),
    "plan": (("plan", "bos", "$caption", "sep"), ("$layout", "eos", "boi", "$image"), ("eoi",)),
    "gvqa": (
        ("vqa", "boi", "$image", "eoi", "bos", "$question", "ground"),
        ("$objects", "sep", "$answer", "eos"),
        (),
    ),
}
# The same tasks with their question before the image (`Grammar.text_first`).
TEXT_FIRST: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "vqa": (("vqa", "bos", "$question", "sep", "boi", "$image", "eoi"), ("$answer", "eos"), ()),
    "ground": (("ground", "bos", "$phrase", "sep", "boi", "$image", "eoi"), ("$box", "eos"), ()),
    "region": (("region", "bos", "$box", "sep", "boi", "$image", "eoi"), ("$phrase", "eos"), ()),
    "gvqa": (
        ("vqa", "bos", "$question", "ground", "boi", "$image", "eoi"),
        ("$objects", "sep", "$answer", "eos"),
        (),
    ),
}
# A question about a read image can be followed by more about the same image in one document
# (`Grammar.document(follow_ups=...)`: each its own question and answer, as in a multi-turn
# conversation): the image's tokens, most of a document, then serve several answers.
FOLLOW_UP: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "vqa": (("bos", "$question", "sep"), ("$answer", "eos")),
    "gvqa": (("bos", "$question", "ground"), ("$objects", "sep", "$answer", "eos")),
    "ground": (("bos", "$phrase", "sep"), ("$box", "eos")),
    "region": (("bos", "$box", "sep"), ("$phrase", "eos")),
}
GROUNDED_TASKS = ("gcap", "ground", "region", "plan", "gvqa")  # need location tokens in the vocabulary
TASKS = (*TEMPLATES, "chat")
# A conversation's turns: who speaks, and the tokens around a turn (omni.vocab short names).
CHAT_ROLES = ("user", "assistant")
CHAT_TURN = {"user": ("bos", "sep"), "assistant": (None, "eos")}  # (opening, closing)


@dataclass
class Document:
    """One training document: tokens with aligned targets (IGNORE: no loss), and its image blocks
    as (start, end, bidirectional): read images and mask-mode generated ones are bidirectional,
    ar-mode generated ones causal (raster order)."""

    task: str
    tokens: list[int]
    targets: list[int]
    images: list[tuple[int, int, bool]] = field(default_factory=list)
    key: str = ""
    pixels: list[torch.Tensor] = field(default_factory=list)
    """(3, R, R) of the first len(pixels) blocks, images an understanding encoder reads."""

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def image(self) -> tuple[int, int] | None:
        """[start, end) of the first image block (the only one of the single-image templates)."""
        return self.images[0][:2] if self.images else None

    @property
    def causal_image(self) -> bool:
        """Whether the first image block is generated in raster order (ar-mode t2i)."""
        return bool(self.images) and not self.images[0][2]

    def masked(self, positions: Sequence[int], mask_id: int) -> Document:
        """Mask mode: the generated image's tokens at `positions` become <mask>, each the target
        of its own position; the image has no next-token loss (text before it keeps its own)."""
        tokens, targets = list(self.tokens), list(self.targets)
        start, end = self.image
        targets[start - 1 : end] = [IGNORE] * (end - start + 1)
        for p in positions:
            targets[p], tokens[p] = tokens[p], mask_id
        images = [(s, e, True) for s, e, _ in self.images]
        return Document(self.task, tokens, targets, images, self.key, self.pixels)


@dataclass
class Prompt:
    """Token ids of one prompt and its image blocks (start, end, bidirectional): read images are
    bidirectional inside, like a read image in training; an ar model's own earlier images in a
    conversation are causal, as it generated them."""

    ids: list[int]
    images: list[tuple[int, int, bool]] = field(default_factory=list)
    pixels: list[torch.Tensor] = field(default_factory=list)
    """(3, R, R) of the first len(pixels) images, for a model that reads them with an understanding
    encoder; the others are read as their codes."""

    def __post_init__(self):
        if len(self.pixels) > len(self.images):
            raise ValueError(f"{len(self.pixels)} pixel tensors for {len(self.images)} image blocks")


@dataclass
class Grammar:
    """The templates over one vocabulary; `text_first` puts questions before the image they ask about."""

    vocab: Vocab
    text_first: bool = False

    def template(self, task: str) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
        """The (prompt, answer, closing) parts of `task` in this grammar."""
        found = template(task)
        return TEXT_FIRST.get(task, found) if self.text_first else found

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
        ids, image = self._render(self.template(task)[0], slots, 0)
        pixels = self._read(task, pixels)
        return Prompt(
            ids + list(answer_start), [(*image, True)] if image else [], [] if pixels is None else [pixels]
        )

    def document(
        self,
        task: str,
        key: str = "",
        causal_image: bool = True,
        pixels=None,
        follow_ups: Sequence[dict] = (),
        **slots,
    ) -> Document:
        """The training document of `task`: the prompt, then the answer with next-token targets
        (each position predicts the next token), then the closing tokens without a loss.

        `causal_image` marks a generated image block as raster-order (ar mode); for mask mode
        call `Document.masked` on the result. `pixels` (3, R, R) go with an image that is read
        (in the prompt), for a model with an understanding encoder. `follow_ups`: the slots of
        more questions about the same image (`FOLLOW_UP`), each after the one before."""
        prompt_parts, answer_parts, closing = self.template(task)
        prompt, image = self._render(prompt_parts, slots, 0)
        answer, answer_image = self._render(answer_parts, slots, len(prompt))
        tail, _ = self._render(closing, slots, 0)
        tokens = prompt + answer + tail
        learnt = [(len(prompt), len(prompt) + len(answer))]
        if follow_ups and task not in FOLLOW_UP:
            raise ValueError(f"task {task!r} takes no follow-up questions; those that do: {tuple(FOLLOW_UP)}")
        for more in follow_ups:
            ask, reply = FOLLOW_UP[task]
            question, _ = self._render(ask, more, 0)
            said, _ = self._render(reply, more, 0)
            tokens += question
            learnt.append((len(tokens), len(tokens) + len(said)))
            tokens += said
        targets = [IGNORE] * len(tokens)
        for start, end in learnt:
            for i in range(start, end):
                targets[i - 1] = tokens[i]
        if image:
            images = [(*image, True)]  # read
        else:
            images = [(*answer_image, not causal_image)] if answer_image else []
        pixels = self._read(task, pixels)
        return Document(task, tokens, targets, images, key, [] if pixels is None else [pixels])

    def _chat(self, turns: Sequence, image_generation: str):
        """Tokens of a conversation, which of them the model learns to produce, and its image
        blocks as (start, end, bidirectional, generated). `turns`: (role, parts), a part being
        ("text", token ids) or ("image", VQ codes)."""
        special = self.vocab.special
        tokens, learn, images = [special("chat")], [False], []
        for n, (role, parts) in enumerate(turns):
            if role not in CHAT_ROLES:
                raise ValueError(f"turn {n}: role {role!r} is not one of {CHAT_ROLES}")
            assistant = role == "assistant"
            opening, closing = CHAT_TURN[role]
            if opening:
                tokens.append(special(opening))
                learn.append(False)
            for kind, content in parts:
                if kind == "text":
                    tokens += list(content)
                    learn += [assistant] * len(content)
                elif kind == "image":
                    tokens.append(special("boi"))
                    learn.append(assistant)
                    start = len(tokens)
                    tokens += [self.vocab.image_offset + int(c) for c in content]
                    learn += [assistant] * len(content)
                    images.append(
                        (start, len(tokens), not assistant or image_generation == "mask", assistant)
                    )
                    tokens.append(special("eoi"))
                    learn.append(False)  # the sampler closes an image itself
                else:
                    raise ValueError(f"turn {n}: part kind {kind!r} is not 'text' or 'image'")
            tokens.append(special(closing))
            learn.append(assistant)
        return tokens, learn, images

    def chat_document(
        self, turns: Sequence, key: str = "", image_generation: str = "ar", rng=None, mask_count=None
    ) -> Document:
        """The training document of a conversation (see the module doc). In mask mode each of the
        assistant's images has `mask_count(n)` of its n codes masked (drawn with `rng`), each the
        target of its own position, as in t2i."""
        tokens, learn, blocks = self._chat(turns, image_generation)
        targets = [IGNORE] * len(tokens)
        for i in range(1, len(tokens)):
            if learn[i]:
                targets[i - 1] = tokens[i]
        if image_generation == "mask":
            mask_id = self.vocab.special("mask")
            for start, end, _, generated in blocks:
                if not generated:
                    continue
                targets[start - 1 : end] = [IGNORE] * (end - start + 1)  # no next-token loss inside
                for p in rng.sample(range(start, end), mask_count(end - start)):
                    targets[p], tokens[p] = tokens[p], mask_id
        return Document("chat", tokens, targets, [b[:3] for b in blocks], key)

    def chat_prompt(self, turns: Sequence, image_generation: str = "ar") -> Prompt:
        """The prompt that asks for the assistant's next turn: the conversation so far, ending with
        the user's turn (the sampler continues with the assistant's parts, until <eos>)."""
        if not turns or turns[-1][0] != "user":
            raise ValueError("a chat prompt ends with the user's turn")
        tokens, _, blocks = self._chat(turns, image_generation)
        return Prompt(tokens, [b[:3] for b in blocks])

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
                try:
                    end = list(ids).index(eoi, i)
                except ValueError:
                    raise ValueError(f"an image block opened at {i} is not closed by <eoi>") from None
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
        hint = "; a conversation is rendered by Grammar.chat_document / chat_prompt" if task == "chat" else ""
        raise ValueError(f"unknown task {task!r}; tasks: {TASKS}{hint}") from None


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
