"""Task documents as training draws them (t2i, caption, vqa, lm; mask and ar mode), packing, and the
code-shard loader. The templates themselves: tests/test_grammar.py."""

from __future__ import annotations

import random

import pytest
import torch

from omni.attention import Visibility
from omni.data.packing import TASKS, Packer, TaskBuilder, cosine_mask_count, task_loader
from omni.grammar import IGNORE
from omni.tokenizers.text import TextTokenizer
from omni.vocab import Vocab


@pytest.fixture(scope="module")
def parts(model_assets):
    tok = TextTokenizer.from_file(model_assets.tokenizer)
    return tok, Vocab.build(tok, codebook_size=64)


CODES = list(range(10, 26))  # a 4x4 "image"


def sample(text: str, qa=()) -> dict:
    """A decoded code-shard sample of CODES (omni.data.packing.decode_code_sample's output)."""
    return {"key": "k", "codes": CODES, "text": text, "qa": [dict(question=q, answer=a) for q, a in qa]}


def test_t2i_in_mask_mode_masks_codes_and_targets_them(parts):
    tok, vocab = parts
    b = TaskBuilder(vocab, tok, "mask", caption_dropout=0.0)
    doc = b.build(sample("a red circle"), "t2i", random.Random(0))
    s, e = doc.image
    caption = tok.encode("a red circle")
    assert doc.tokens[:2] == [vocab.special("t2i"), vocab.special("bos")]
    assert doc.tokens[2 : 2 + len(caption)] == caption and doc.tokens[s - 1] == vocab.special("boi")
    assert doc.tokens[e] == vocab.special("eoi") and e - s == len(CODES)
    masked = [p for p in range(s, e) if doc.tokens[p] == vocab.special("mask")]
    assert masked and [p for p, t in enumerate(doc.targets) if t != IGNORE] == masked
    assert all(doc.targets[p] == vocab.image_offset + CODES[p - s] for p in masked)
    kept = [p for p in range(s, e) if p not in masked]
    assert all(doc.tokens[p] == vocab.image_offset + CODES[p - s] for p in kept)
    # Caption dropout leaves an empty caption: <t2i> <bos> <eos> <boi> ...
    dropped = TaskBuilder(vocab, tok, "mask", caption_dropout=1.0).build(
        sample("a red circle"), "t2i", random.Random(0)
    )
    assert dropped.tokens[:4] == [vocab.special(n) for n in ("t2i", "bos", "eos", "boi")]


def test_cosine_mask_ratio_covers_the_range():
    rng = random.Random(0)
    counts = [cosine_mask_count(64, rng) for _ in range(2000)]
    assert min(counts) >= 1 and max(counts) == 64
    assert 0.55 < sum(counts) / (64 * 2000) < 0.72  # E[cos(pi u / 2)] = 2 / pi = 0.64


def test_t2i_in_ar_mode_predicts_the_next_code(parts):
    tok, vocab = parts
    doc = TaskBuilder(vocab, tok, "ar", caption_dropout=0.0).build(
        sample("a red circle"), "t2i", random.Random(0)
    )
    s, e = doc.image
    assert vocab.special("mask") not in doc.tokens
    targets = {p: t for p, t in enumerate(doc.targets) if t != IGNORE}
    assert targets == {p - 1: doc.tokens[p] for p in range(s, e)}  # <boi> predicts the first code


def test_understanding_documents_target_only_the_answer(parts):
    tok, vocab = parts
    b = TaskBuilder(vocab, tok, "mask")
    described = b.build(sample("a red circle"), "caption", random.Random(0))
    assert described.tokens[:2] == [vocab.special("mmu"), vocab.special("boi")]
    assert described.image == (2, 2 + len(CODES))
    caption = tok.encode("a red circle")
    target_tokens = [t for t in described.targets if t != IGNORE]
    assert target_tokens == [*caption, vocab.special("eos")]
    vqa = b.build(sample("", [("what color is the circle?", "red")]), "vqa", random.Random(0))
    assert [t for t in vqa.targets if t != IGNORE] == [*tok.encode("red"), vocab.special("eos")]
    sep = vqa.tokens.index(vocab.special("sep"))
    assert vqa.targets[sep] == tok.encode("red")[0] and all(t == IGNORE for t in vqa.targets[:sep])
    lm = b.build(sample("a red circle"), "lm", random.Random(0))
    assert [t for t in lm.targets if t != IGNORE] == [*caption, vocab.special("eos")] and lm.image is None


def test_packing_isolates_documents_and_restarts_positions(parts):
    tok, vocab = parts
    b = TaskBuilder(vocab, tok, "mask", caption_dropout=0.0)
    docs = [
        b.build(sample("a red circle"), "t2i", random.Random(1)),
        b.build(sample("a blue square"), "lm", random.Random(0)),
        b.build(sample("two shapes"), "caption", random.Random(0)),
    ]
    packer = Packer(seq_len=48, batch_size=2, pad_id=vocab.special("pad"))
    out = [batch for d in docs for batch in packer.add(d)] + packer.flush()
    assert len(out) == 1
    batch = out[0]
    first, second = len(docs[0]) + len(docs[1]), len(docs[2])
    assert first <= 48 < first + second  # the third document started row 2
    assert batch["positions"][0, : len(docs[0])].tolist() == list(range(len(docs[0])))
    assert batch["positions"][0, len(docs[0]) : first].tolist() == list(range(len(docs[1])))
    mask = Visibility(batch["doc"], batch["last"]).dense_mask()[:, 0]
    s, e = docs[0].image
    assert mask[0, s, e - 1] and not mask[0, s - 1, s]  # bidirectional image, causal text
    assert not mask[0, len(docs[0]), len(docs[0]) - 1]  # the lm document does not see the t2i one
    assert (batch["tokens"][0, first:] == vocab.special("pad")).all()
    task = batch["task"]
    assert set(task[batch["targets"] != IGNORE].tolist()) == {
        TASKS.index(t) for t in ("t2i", "lm", "caption")
    }
    assert (task[batch["targets"] == IGNORE] == -1).all()
    index = batch["image_index"]
    assert index[0, s:e].tolist() == list(range(e - s)) and (index[0, :s] == -1).all()
    assert (index[0, e:first] == -1).all() and index[1, :second].max() == len(CODES) - 1


def test_ar_mode_makes_only_generated_images_causal(parts):
    tok, vocab = parts
    b = TaskBuilder(vocab, tok, "ar", caption_dropout=0.0)
    docs = [
        b.build(sample("a red circle"), "t2i", random.Random(1)),
        b.build(sample("a red circle"), "caption", random.Random(0)),
    ]
    packer = Packer(seq_len=64, batch_size=2, pad_id=vocab.special("pad"))
    batch = ([x for d in docs for x in packer.add(d)] + packer.flush())[0]
    mask = Visibility(batch["doc"], batch["last"]).dense_mask()[0, 0]  # both documents share row 0
    s, e = docs[0].image
    assert not mask[s, e - 1] and mask[e - 1, s]  # t2i: raster order, each code sees the earlier ones
    s, e = (i + len(docs[0]) for i in docs[1].image)
    assert mask[s, e - 1]  # caption: the image is read whole, as the caption sampler lays it out


def test_loader_mixes_tasks_from_code_shards_and_counts_overlong(parts, model_assets, caplog):
    tok, vocab = parts
    loader = task_loader(
        str(model_assets.codes / "train-*.tar"),
        TaskBuilder(vocab, tok, "mask"),
        ratios={"t2i": 1, "caption": 1, "vqa": 1, "lm": 1},
        seq_len=128,
        batch_size=4,
        batches_per_epoch=6,
    )
    seen = set()
    for batch in loader:
        assert batch["tokens"].shape == (4, 128) and batch["tokens"].max() < vocab.size
        seen |= set(batch["task"][batch["task"] >= 0].tolist())
    assert seen == {0, 1, 2, 3}
    # Rows too short for an image document: every image document is skipped and counted.
    short = task_loader(
        str(model_assets.codes / "train-*.tar"),
        TaskBuilder(vocab, tok, "mask"),
        ratios={"t2i": 1, "lm": 1},
        seq_len=40,
        batch_size=4,
        batches_per_epoch=2,
    )
    for batch in short:
        assert set(batch["task"][batch["task"] >= 0].tolist()) == {TASKS.index("lm")}
    assert short.skipped["over-long document"] > 0
    with pytest.raises(ValueError, match="task ratios"):
        task_loader(
            "x",
            TaskBuilder(vocab, tok, "mask"),
            ratios={"img": 1},
            seq_len=8,
            batch_size=1,
            batches_per_epoch=1,
        )


def test_codes_outside_the_codebook_stop_with_a_clear_error(parts):
    """Codes beyond the codebook mean shards of another VQ: not a damaged sample to skip."""
    import numpy as np

    from omni.data.loader import SkipCounter
    from omni.data.packing import pack_stage

    tok, vocab = parts
    good = {"codes": np.arange(16), "text": "a red circle", "qa": [], "key": "good"}
    bad = {"codes": np.full(16, 64), "text": "a red circle", "qa": [], "key": "bad"}  # codebook has 64 codes
    stage = pack_stage(
        iter([good, bad]),
        SkipCounter(),
        "0",
        builder=TaskBuilder(vocab, tok, "mask"),
        ratios={"lm": 1},
        seq_len=32,
        batch_size=4,
    )
    with pytest.raises(ValueError, match="sample bad holds codes up to 64, but data.vq has 64 codes"):
        list(stage)


def test_a_stream_of_unusable_samples_fails_instead_of_spinning():
    from omni.data.loader import SkipCounter

    skips = SkipCounter(limit=10)
    for _ in range(9):
        skips.skip("over-long document", "k")
    skips.used()  # one usable sample resets the run
    for _ in range(9):
        skips.skip("over-long document", "k")
    with pytest.raises(ValueError, match="last 10 samples were all unusable .*over-long document: 19"):
        skips.skip("over-long document", "k")


def test_a_reading_loader_gives_each_read_image_its_pixels(parts, model_assets, shapes_dir, tmp_path):
    """Code shards keep a copy of each image; a builder with a read resolution decodes it for the
    caption and vqa documents, and `read_at` marks exactly their blocks, in order."""
    import webdataset as wds

    from omni.data.codes import code_shard_keeps_images
    from omni.data.images import load_rgb, to_tensor
    from omni.data.loader import SkipCounter
    from omni.data.packing import decode_code_sample
    from omni.tokenizers import load_vq
    from omni.tokenizers.encode import encode_shard

    tok, vocab = parts
    shard = model_assets.codes / "train-000000.tar"
    assert code_shard_keeps_images(shard)
    originals = {
        s["__key__"]: to_tensor(load_rgb(s["png"]), 32)
        for s in wds.WebDataset(str(shapes_dir / "train-000000.tar"), shardshuffle=False)
    }
    loader = task_loader(
        str(shard),
        TaskBuilder(vocab, tok, "ar", read_resolution=32),
        ratios={"t2i": 1, "caption": 1, "vqa": 1},
        seq_len=256,
        batch_size=2,
        batches_per_epoch=3,
        every_task=True,
        resampled=False,
        shuffle_buffer=0,
    )
    batch = next(iter(loader))
    read_tasks = {TASKS.index("caption"), TASKS.index("vqa")}
    n = batch["read_pixels"].shape[0]
    assert n > 0 and int(batch["read_at"].sum()) == 64 * n
    assert (batch["image_index"][batch["read_at"]] >= 0).all()  # inside image blocks only
    # The pixels are the source images, one per caption/vqa document, in document order.
    docs_with_pixels = [k for k, t in zip(batch["keys"], _doc_tasks(batch)) if t in read_tasks]
    assert len(docs_with_pixels) == n
    for k, px in zip(docs_with_pixels, batch["read_pixels"]):
        assert torch.equal(px, originals[k])

    # A code shard written without images: the reading loader skips (and counts) its samples.
    vq = load_vq(model_assets.vq)
    bare = tmp_path / "train-000000.tar"
    encode_shard(vq, str(shapes_dir / "train-000000.tar"), bare, keep_images=False)
    assert not code_shard_keeps_images(bare)
    skips = SkipCounter()
    raw = next(iter(wds.WebDataset(str(bare), shardshuffle=False)))
    assert decode_code_sample(raw, skips, read_resolution=32) is None
    assert skips.seen["missing image"] == 1
    assert decode_code_sample(raw, skips)["codes"].size == 64  # a codes model reads it as before


def _doc_tasks(batch) -> list[int]:
    """The task of each packed document, in order (its first target's task)."""
    tasks = []
    for row_doc, row_task in zip(batch["doc"], batch["task"]):
        for d in row_doc.unique(sorted=True).tolist():
            t = row_task[(row_doc == d) & (row_task >= 0)]
            if len(t):
                tasks.append(int(t[0]))
    return tasks


@pytest.mark.parametrize("mode", ["ar", "mask"])
def test_grounded_tasks_come_from_the_objects_of_code_shards(model_assets, mode):
    """The shapes shards' objects (KEY.json boxes, carried into the code shards) give grounded
    captions, referring expressions, region names and layout-first documents, each with its
    targets where the grammar puts them; the boxes are the objects' own (within half a bin)."""
    from omni.data.loader import SkipCounter
    from omni.data.packing import decode_code_sample
    from omni.data.shards import iterate_samples
    from omni.grounding import ids_box, iou, parse_grounded

    tok = TextTokenizer.from_file(model_assets.tokenizer)
    vocab = Vocab.build(tok, codebook_size=64, locations=32)
    builder = TaskBuilder(vocab, tok, mode, caption_dropout=0.0, resolution=32)
    raw = next(
        s for s in iterate_samples(str(model_assets.codes / "val-*.tar")) if b'"relation": "' in s["json"]
    )
    sample = decode_code_sample(raw, SkipCounter())
    objects = builder.objects(sample)
    assert len(objects) == 2
    rng = random.Random(0)
    gcap = builder.build(sample, "gcap", rng)
    learnt = [t for t in gcap.targets if t != IGNORE][:-1]  # the grounded caption, without <eos>
    read = parse_grounded(vocab, tok.decode, learnt, (32, 32))
    assert read.text == " ".join(sample["text"].split()) and len(read.boxes) == 2
    for (phrase, box), (name, truth) in zip(
        read.boxes, sorted(objects, key=lambda o: sample["text"].find(o[0]))
    ):
        assert phrase.endswith(name) and iou(box, truth) > 0.8
    ground = builder.build(sample, "ground", rng)
    box = [t for t in ground.targets if t != IGNORE][:4]
    phrase = tok.decode(
        ground.tokens[
            ground.tokens.index(vocab.special("bos")) + 1 : ground.tokens.index(vocab.special("sep"))
        ]
    )
    assert iou(ids_box(vocab, box, (32, 32)), dict(objects)[phrase.strip()]) > 0.8
    plan = builder.build(sample, "plan", rng)
    start, end = plan.image
    assert plan.tokens[start - 1] == vocab.special("boi") and end - start == len(sample["codes"])
    layout_end = plan.tokens.index(vocab.special("eos"), plan.tokens.index(vocab.special("sep")))
    assert all(t != IGNORE for t in plan.targets[plan.tokens.index(vocab.special("sep")) : layout_end])
    if mode == "mask":
        assert vocab.special("mask") in plan.tokens[start:end]
    # A sample without objects has no grounded document
    assert builder.build(sample | {"objects": []}, "gcap", rng) is None


def test_grounded_tasks_that_read_an_image_can_skip_single_object_images(model_assets):
    """With grounding_min_objects=2, an image with one object (whose box needs no name) never
    becomes a gcap/ground/region/gvqa document; it draws among the other tasks (plan included),
    and two-object images still serve every task."""
    import numpy as np

    from omni.data.loader import SkipCounter
    from omni.data.packing import READ_GROUNDED, pack_stage

    tok = TextTokenizer.from_file(model_assets.tokenizer)
    vocab = Vocab.build(tok, codebook_size=64, locations=16)
    qa = [{"question": "what color is the circle?", "answer": "red"}]
    one = {"codes": np.arange(64), "text": "a red circle", "qa": qa, "key": "one",
           "objects": [("red circle", (0.1, 0.1, 0.4, 0.4))], "image_size": (1, 1)}  # fmt: skip
    two = one | {"key": "two", "text": "a red circle left of a blue square",
                 "objects": [*one["objects"], ("blue square", (0.6, 0.1, 0.9, 0.4))]}  # fmt: skip
    ratios = {"caption": 1, "plan": 1, **{t: 1 for t in READ_GROUNDED}}
    for least, expect_one in ((1, {"caption", "plan", *READ_GROUNDED}), (2, {"caption", "plan"})):
        builder = TaskBuilder(vocab, tok, "ar", resolution=32, grounding_min_objects=least)
        drawn = {"one": set(), "two": set()}
        build = builder.build

        def recording(sample, task, rng, build=build, drawn=drawn):
            drawn[sample["key"]].add(task)
            return build(sample, task, rng)

        builder.build = recording
        for _ in pack_stage(
            iter([one, two] * 100),
            SkipCounter(),
            "0",
            builder=builder,
            ratios=ratios,
            seq_len=256,
            batch_size=4,
        ):
            pass
        assert drawn == {"one": expect_one, "two": set(ratios)}
