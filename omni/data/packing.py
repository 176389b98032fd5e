"""Training batches from code shards: documents of each task (omni.grammar), drawn by ratio, packed.

Each sample of a code shard (`KEY.codes.npy`, `KEY.txt`, `KEY.json` with QA pairs) becomes one
document of one task (t2i, caption, vqa, lm; templates in `omni.grammar`), drawn by the
configured mixing ratios. What is sampled is decided here: in `mask` mode a t2i image block is
bidirectional and a cosine-sampled fraction of its codes is replaced by <mask> (the loss is on
those positions, target: the code itself); in `ar` mode it is causal and every image position
predicts the next token. Images that are read, not generated (caption, vqa), are bidirectional
in both modes, as the samplers lay them out. A t2i caption is dropped with probability
`caption_dropout`, which teaches the unconditional model that classifier-free guidance needs;
a vqa document takes one of the sample's question-answer pairs at random. A dialogue sample
(`omni.data.dialogue`) becomes a chat document when `chat` has a ratio above 0 (how often chats
come is the dialogue samples' share of the shards); the other samples draw among the other tasks.
A conversation's images are read as codes, also by a model with an understanding encoder.

For a model that reads images with an understanding encoder (`understanding: encoder`), the
builder's `read_resolution` is the encoder's: each sample's image (the copy `KEY.png|jpg` that
code shards keep beside the codes, `omni.tokenizers.encode`) is decoded at that resolution, caption
and vqa documents carry it, and batches add `read_pixels` (N, 3, R, R) and `read_at` (B, T): the
positions of those images' blocks, in the same row-major order.

Documents are packed greedily into rows of `seq_len` tokens; each row carries the tokens,
targets (IGNORE where there is no loss), the task of each target, and the layout of
`omni.grammar.lay_out` (rotary positions restarting at 0 in each document, image indices,
the omni-attention vectors doc and last).
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial

import torch

from omni.data.codes import npy_to_codes
from omni.data.dialogue import is_dialogue, parse_conversation, tokenized
from omni.data.images import load_rgb, to_tensor
from omni.data.loader import IMAGE_EXTENSIONS, ShardDataset, ShardLoader, checked_caption
from omni.data.objects import read_objects
from omni.data.shards import expand_shards
from omni.grammar import GROUNDED_TASKS, IGNORE, TASKS, Document, Grammar, Placed, lay_out
from omni.grounding import (
    box_ids,
    grounded_caption_parts,
    grounded_ids,
    layout_parts,
    phrase_text,
    resized_box,
)
from omni.vocab import Vocab


def cosine_mask_count(n: int, rng: random.Random) -> int:
    """How many of n image tokens to mask: n * cos(pi/2 * u), u ~ U[0, 1), at least 1 (MaskGIT)."""
    return max(1, math.ceil(n * math.cos(math.pi / 2 * rng.random())))


READ_GROUNDED = ("gcap", "ground", "region", "gvqa")  # grounded tasks that read an image


@dataclass
class TaskBuilder:
    """Turns decoded code-shard samples into documents of each task (drawing what is random)."""

    vocab: Vocab
    tokenizer: object  # omni.tokenizers.text.TextTokenizer (anything with .encode(str) -> list[int])
    image_generation: str = "mask"
    caption_dropout: float = 0.1
    read_resolution: int = 0
    """Pixels per side of the images an understanding encoder reads (0: images are read as codes)."""
    resolution: int = 0
    """Pixels per side of the images the codes encode (the VQ's): the frame of grounded boxes."""
    text_first: bool = False
    """Questions before the image they ask about (omni.grammar)."""
    questions_per_image: int = 1
    """Questions a vqa, gvqa, ground or region document asks about its image, each answered
    before the next (omni.grammar follow-ups); 1: one question per document."""
    grounding_min_objects: int = 1
    """The grounded tasks that read an image (READ_GROUNDED) serve only images with at least
    this many objects: with one, the box needs no name (a shortcut that stalls binding)."""

    def __post_init__(self):
        self.grammar = Grammar(self.vocab, self.text_first)

    def build(self, sample: dict, task: str, rng: random.Random) -> Document | None:
        """The document of `task` for a decoded sample; None when the sample has no data for it
        (a conversation serves only `chat`, and only a conversation serves it)."""
        key, codes, encode = sample["key"], sample["codes"], self.tokenizer.encode
        if ("turns" in sample) != (task == "chat"):
            return None
        if task == "chat":
            turns = tokenized(sample["turns"], encode, codes)
            return self.grammar.chat_document(
                turns, key, self.image_generation, rng, lambda n: cosine_mask_count(n, rng)
            )
        if task == "t2i":
            dropped = rng.random() < self.caption_dropout
            caption = [] if dropped else encode(sample["text"])
            ar = self.image_generation == "ar"
            doc = self.grammar.document("t2i", key, causal_image=ar, caption=caption, image=codes)
            if ar:
                return doc
            start, end = doc.image
            masked = rng.sample(range(start, end), cosine_mask_count(end - start, rng))
            return doc.masked(masked, self.vocab.special("mask"))
        if task in GROUNDED_TASKS:
            return self._grounded(sample, task, rng)
        pixels = sample.get("pixels") if self.read_resolution else None
        if task == "caption":
            return self.grammar.document(
                "caption", key, image=codes, caption=encode(sample["text"]), pixels=pixels
            )
        if task == "lm":
            return self.grammar.document("lm", key, text=encode(sample["text"]))
        if task == "vqa":
            if not sample["qa"]:
                return None
            asked = [
                {"question": encode(p["question"]), "answer": encode(p["answer"])}
                for p in self._pick(sample["qa"], rng)
            ]
            return self.grammar.document(
                "vqa", key, image=codes, pixels=pixels, follow_ups=asked[1:], **asked[0]
            )
        raise ValueError(f"unknown task {task!r}; tasks: {TASKS}")

    def serves(self, sample: dict, task: str) -> bool:
        """Whether `task` may be drawn for `sample` (see `grounding_min_objects`)."""
        if task not in READ_GROUNDED or self.grounding_min_objects <= 1:
            return True
        return len(sample.get("objects", ())) >= self.grounding_min_objects

    def _pick(self, items: list, rng: random.Random) -> list:
        """Up to `questions_per_image` of `items` in a random order (one: a random one)."""
        return rng.sample(items, min(self.questions_per_image, len(items)))

    def objects(self, sample: dict) -> list[tuple[str, tuple[float, ...]]]:
        """The sample's objects with their boxes moved into the frame of its codes (VQ pixels)."""
        res, size = self.resolution, sample.get("image_size") or (self.resolution, self.resolution)
        moved = [(name, resized_box(box, size, res)) for name, box in sample.get("objects", [])]
        return [(name, box) for name, box in moved if box is not None]

    def _grounded(self, sample: dict, task: str, rng: random.Random) -> Document | None:
        """A grounded document (omni.grammar: gcap, ground, region, plan, gvqa); None without objects
        (gvqa: without questions)."""
        if not self.resolution:
            raise ValueError("grounded tasks need the images' resolution (TaskBuilder.resolution: the VQ's)")
        objects = self.objects(sample)
        if not objects:
            return None
        key, codes, encode, grammar = sample["key"], sample["codes"], self.tokenizer.encode, self.grammar
        frame = (self.resolution, self.resolution)

        def ids(parts) -> list[int]:
            return grounded_ids(self.vocab, encode, parts, frame)

        if task == "gcap":
            parts = grounded_caption_parts(sample["text"], objects)
            return None if parts is None else grammar.document("gcap", key, image=codes, caption=ids(parts))
        if task == "gvqa":
            # The objects the question names, with their boxes, in the order named (none for a
            # question that names none), then the answer.
            if not sample["qa"]:
                return None
            asked = []
            for pair in self._pick(sample["qa"], rng):
                mentioned = [(n, b) for n, b in objects if n.lower() in pair["question"].lower()]
                parts = grounded_caption_parts(pair["question"], mentioned) or []
                boxes = [b for b in parts[1::2] if isinstance(b, tuple)]
                chain = [next((n, x) for n, x in mentioned if x == b) for b in boxes]
                asked.append(
                    {
                        "question": encode(pair["question"]),
                        "objects": ids(layout_parts(chain)),
                        "answer": encode(pair["answer"]),
                    }
                )
            return grammar.document("gvqa", key, image=codes, follow_ups=asked[1:], **asked[0])
        if task in ("ground", "region"):
            names = [name for name, _ in objects]
            unique = [(n, b) for n, b in objects if names.count(n) == 1]  # a phrase must name one box
            if not unique:
                return None
            asked = [
                {"phrase": encode(phrase_text(n)), "box": box_ids(self.vocab, b, frame)}
                for n, b in self._pick(unique, rng)
            ]
            return grammar.document(task, key, image=codes, follow_ups=asked[1:], **asked[0])
        # plan: the caption, then the layout in the caption's order of mention, then the image
        mentioned = grounded_caption_parts(sample["text"], objects)
        order = [(p, b) for p, b in zip(mentioned[::2], mentioned[1::2])] if mentioned else []
        named = [(next(n for n, bx in objects if bx == b), b) for _, b in order] if order else objects
        caption = [] if rng.random() < self.caption_dropout else encode(sample["text"])
        ar = self.image_generation == "ar"
        doc = grammar.document(
            "plan", key, causal_image=ar, caption=caption, layout=ids(layout_parts(named)), image=codes
        )
        if ar:
            return doc
        start, end = doc.image
        return doc.masked(
            rng.sample(range(start, end), cosine_mask_count(end - start, rng)), self.vocab.special("mask")
        )


def decode_code_sample(
    sample: dict, skips, max_caption_chars: int = 8192, read_resolution: int = 0
) -> dict | None:
    """Raw code-shard sample -> {"codes", "text", "qa", "key"}, or None (counted) when unusable;
    with a `read_resolution`, also "pixels" (3, R, R) in [-1, 1] from the image the shard keeps."""
    where = f"{sample.get('__url__', '?')}:{sample.get('__key__', '?')}"
    raw = sample.get("codes.npy")
    if raw is None:
        skips.skip(
            "missing codes", where, "no .codes.npy file: is this a code shard? (tokenizers/encode_shards.py)"
        )
        return None
    try:
        codes = npy_to_codes(raw)
    except Exception as e:  # numpy raises several kinds for bad bytes
        skips.skip("undecodable codes", where, str(e))
        return None
    meta = None
    if "json" in sample:
        try:
            meta = json.loads(sample["json"])
        except ValueError as e:
            skips.skip("unreadable json", where, str(e))  # counted; the sample still serves t2i/caption/lm
    key = sample.get("__key__", "")
    if is_dialogue(meta):  # a conversation (omni.data.dialogue): its N images' codes are (N, h, w)
        images = codes.shape[0] if codes.ndim == 3 else 1
        try:
            turns = parse_conversation(meta, images)
        except ValueError as e:
            skips.skip("bad conversation", where, str(e))
            return None
        return {"codes": codes.reshape(images, -1), "turns": turns, "key": key}
    codes = codes.reshape(-1)
    text = checked_caption(sample, skips, where, max_caption_chars)
    if text is None:
        return None
    qa = meta.get("qa", []) if isinstance(meta, dict) else []
    qa = [p for p in qa if isinstance(p, dict) and p.get("question") and p.get("answer")]
    out = {"codes": codes, "text": text, "qa": qa, "key": key}
    try:
        out["objects"], out["image_size"] = read_objects(meta)
    except ValueError as e:  # the sample still serves the tasks that need no boxes
        skips.skip("bad objects in json", where, str(e))
    if read_resolution:
        ext = next((e for e in IMAGE_EXTENSIONS if e in sample), None)
        if ext is None:
            skips.skip(
                "missing image",
                where,
                "the model reads images with its encoder, but this code shard keeps no image: re-encode the "
                "shards with tokenizers/encode_shards.py (without --no-images)",
            )
            return None
        try:
            out["pixels"] = to_tensor(load_rgb(sample[ext]), read_resolution)
        except Exception as e:  # PIL raises many types for bad bytes; none of them may stop a run
            skips.skip("undecodable image", where, f"{type(e).__name__}: {e}")
            return None
    return out


@dataclass
class Packer:
    """Packs documents greedily into rows of `seq_len` and stacks rows into batches."""

    seq_len: int
    batch_size: int
    pad_id: int
    read_resolution: int = 0
    """With an understanding encoder: batches carry `read_pixels` and `read_at` (see the module)."""
    rows: list[list[Document]] = field(default_factory=list)
    current: list[Document] = field(default_factory=list)
    used: int = 0

    def add(self, doc: Document) -> list[dict]:
        """Add a document; returns the batches that became complete (zero or one)."""
        if self.used + len(doc) > self.seq_len:
            self.rows.append(self.current)
            self.current, self.used = [], 0
        self.current.append(doc)
        self.used += len(doc)
        if len(self.rows) == self.batch_size:
            batch, self.rows = self.collate(self.rows), []
            return [batch]
        return []

    def flush(self) -> list[dict]:
        """The last, possibly short, batch."""
        if self.current:
            self.rows.append(self.current)
            self.current, self.used = [], 0
        batch, self.rows = (self.collate(self.rows) if self.rows else None), []
        return [batch] if batch else []

    def collate(self, rows: list[list[Document]]) -> dict:
        b, t = len(rows), self.seq_len
        tokens = torch.full((b, t), self.pad_id, dtype=torch.long)
        targets = torch.full((b, t), IGNORE, dtype=torch.long)
        task = torch.full((b, t), -1, dtype=torch.long)
        placed, keys, pixels = [], [], []
        for r, docs in enumerate(rows):
            row, offset = [], 0
            for doc in docs:
                n = len(doc)
                tokens[r, offset : offset + n] = torch.tensor(doc.tokens)
                tgt = torch.tensor(doc.targets)
                targets[r, offset : offset + n] = tgt
                task[r, offset : offset + n][tgt != IGNORE] = TASKS.index(doc.task)
                images = [(offset + s, offset + e, both) for s, e, both in doc.images]
                reads = [(offset + s, offset + e) for s, e, _ in doc.images[: len(doc.pixels)]]
                pixels += doc.pixels
                row.append(Placed(offset, offset + n, images, reads))
                keys.append(doc.key)
                offset += n
            placed.append(row)
        laid = lay_out(placed, t)
        reads = {}
        if self.read_resolution:
            res = self.read_resolution
            reads = {
                "read_pixels": torch.stack(pixels) if pixels else torch.zeros(0, 3, res, res),
                "read_at": laid.read_at,
            }
        return reads | {
            "tokens": tokens,
            "targets": targets,
            "positions": laid.positions,
            "doc": laid.vis.doc,
            "last": laid.vis.last,
            "task": task,
            "image_index": laid.image_index,
            "keys": keys,
        }


def pack_stage(
    src: Iterator[dict],
    skips,
    seed: str,
    *,
    builder: TaskBuilder,
    ratios: dict[str, float],
    seq_len: int,
    batch_size: int,
    every_task: bool = False,
) -> Iterator[dict]:
    """Pipeline stage: decoded samples -> documents (task drawn by `ratios`) -> packed batches.

    With `every_task`, each sample yields one document of every task with a non-zero ratio
    (validation: every task measured on the same images). Batches carry the skip counts.
    """
    rng = random.Random(seed)
    # A conversation is a chat document whatever is drawn; other samples draw among the rest.
    chat = ratios.get("chat", 0) > 0
    tasks = [t for t in TASKS if ratios.get(t, 0) > 0 and t != "chat"]
    weights = [ratios[t] for t in tasks]
    packer = Packer(seq_len, batch_size, builder.vocab.special("pad"), builder.read_resolution)
    codebook_size = builder.vocab.codebook_size
    for sample in src:
        codes = sample["codes"]
        if codes.size == 0:
            skips.skip("no codes", sample["key"], "an empty codes.npy")
            continue
        if codes.min() < 0 or codes.max() >= codebook_size:
            # Not a damaged sample but shards of another VQ: training on them would teach the model
            # codes that mean other pictures (and those in range would pass unnoticed).
            raise ValueError(
                f"code shard sample {sample['key']} holds codes up to {int(codes.max())}, but data.vq has "
                f"{codebook_size} codes: another VQ encoded these shards; point data.vq at it, or re-encode "
                f"them with tokenizers/encode_shards.py --vq DATA_VQ --overwrite"
            )
        if "turns" in sample:
            chosen = ["chat"] if chat else []
        else:
            pool = [(t, w) for t, w in zip(tasks, weights) if builder.serves(sample, t)]
            chosen = tasks if every_task else rng.choices(*zip(*pool)) if pool else []
        if not chosen:
            skips.skip(
                "no task for the sample", sample["key"], "data.ratios gives this kind of sample no task"
            )
            continue
        for task in chosen:
            doc = builder.build(sample, task, rng)
            if doc is None:
                missing = (
                    "objects with boxes"
                    if task in GROUNDED_TASKS and task != "gvqa"
                    else "question-answer pairs"
                )
                skips.skip(f"no data for task {task}", sample["key"], f"no {missing} in KEY.json")
                continue
            if len(doc) > seq_len:
                skips.skip("over-long document", sample["key"], f"{len(doc)} tokens > seq_len {seq_len}")
                continue
            skips.used()
            for batch in packer.add(doc):
                yield {**batch, "skipped": skips.drain()}
    for batch in packer.flush():
        yield {**batch, "skipped": skips.drain()}


def task_loader(
    shards: str | list[str],
    builder: TaskBuilder,
    *,
    ratios: dict[str, float],
    seq_len: int,
    batch_size: int,
    batches_per_epoch: int,
    num_workers: int = 0,
    seed: int = 0,
    resampled: bool = True,
    shuffle_buffer: int = 1000,
    every_task: bool = False,
    max_caption_chars: int = 8192,
):
    """Loader of packed batches (see `Packer.collate`) from code shards.

    Endless and split by node and worker like every Omni loader (`omni.data.loader`); every rank
    yields `batches_per_epoch` batches per epoch. `resampled=False` reads the shards once.
    """
    unknown = sorted(set(ratios) - set(TASKS))
    if unknown or not any(v > 0 for v in ratios.values()) or any(v < 0 for v in ratios.values()):
        raise ValueError(f"task ratios must be >= 0 over {TASKS} with at least one > 0, got {ratios}")
    stage = partial(
        pack_stage,
        builder=builder,
        ratios=ratios,
        seq_len=seq_len,
        batch_size=batch_size,
        every_task=every_task,
    )
    decode = partial(
        decode_code_sample, max_caption_chars=max_caption_chars, read_resolution=builder.read_resolution
    )
    ds = ShardDataset(
        expand_shards(shards),
        decode,
        batch_size,
        shuffle_buffer=shuffle_buffer,
        seed=seed,
        resampled=resampled,
        batch_stage=stage,
    )
    return ShardLoader(ds, batches_per_epoch, num_workers, name="code shards")
