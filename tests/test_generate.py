"""Samplers: KV-cached paths equal recomputation, padding-correct batching, constraints, determinism."""

from __future__ import annotations

import pytest
import torch
from conftest import eager_to_draw

from omni.generate import (
    Prompt,
    generate_images_ar,
    generate_images_mask,
    generate_interleaved,
    generate_text,
    mask_schedule,
    sample,
)
from omni.grammar import Grammar
from omni.model import ModelConfig, Transformer
from omni.tokenizers.text import TextTokenizer
from omni.vocab import Vocab

GRID = 16


@pytest.fixture(scope="module")
def setup(model_assets):
    tok = TextTokenizer.from_file(model_assets.tokenizer)
    vocab = Vocab.build(tok, codebook_size=64)
    torch.manual_seed(0)
    # Learned image positions in both, and in ar the code appearance table (random here, with its
    # zero-initialised projections made non-zero) and 2-D rotary positions: the samplers must
    # feed them alike.
    models = {
        mode: Transformer(
            ModelConfig.from_name(
                "tiny",
                vocab_size=vocab.size,
                image_generation=mode,
                image_positions=GRID,
                image_codes=64 if mode == "ar" else 0,
                image_features=12 if mode == "ar" else 0,
                grid_rotary=mode == "ar",
            )
        ).eval()
        for mode in ("mask", "ar")
    }
    ar = models["ar"]
    ar.code_features.normal_()
    torch.nn.init.normal_(ar.code_projection.weight, std=0.02)
    torch.nn.init.normal_(ar.code_readout.weight, std=0.02)
    return tok, vocab, models


def image_prompt(vocab, codes, question=None, tok=None):
    """A caption prompt of `codes`, or with a question a vqa prompt (omni.grammar)."""
    if question:
        return Grammar(vocab).prompt("vqa", image=codes, question=tok.encode(question))
    return Grammar(vocab).prompt("caption", image=codes)


def test_text_decoding_is_padding_correct_and_kv_cache_equals_recomputation(setup):
    tok, vocab, models = setup
    model = models["mask"]
    prompts = [
        image_prompt(vocab, list(range(GRID))),
        image_prompt(vocab, list(range(5, 5 + GRID)), "what color is the circle?", tok),
        Prompt([vocab.special("lm"), vocab.special("bos"), *tok.encode("a red")]),
    ]
    cached = generate_text(model, vocab, prompts, max_new_tokens=10)
    recomputed = generate_text(model, vocab, prompts, max_new_tokens=10, use_cache=False)
    alone = [generate_text(model, vocab, [p], max_new_tokens=10)[0] for p in prompts]
    assert cached == recomputed == alone
    allowed = vocab.text_id_mask()
    assert all(allowed[t] and t != vocab.special("eos") for row in cached for t in row)
    assert all(len(row) <= 10 for row in cached)


def test_ar_image_generation_with_kv_cache_equals_recomputation(setup):
    tok, vocab, models = setup
    captions = [tok.encode("a red circle"), tok.encode("a blue square on the left of a green triangle")]
    fast = generate_images_ar(models["ar"], vocab, captions, GRID, guidance=2.0, temperature=0.0)
    slow = generate_images_ar(
        models["ar"], vocab, captions, GRID, guidance=2.0, temperature=0.0, use_cache=False
    )
    assert torch.equal(fast, slow)
    assert fast.shape == (2, GRID) and fast.min() >= 0 and fast.max() < vocab.codebook_size
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    a = generate_images_ar(models["ar"], vocab, captions, GRID, generator=g())
    b = generate_images_ar(models["ar"], vocab, captions, GRID, generator=g())
    assert torch.equal(a, b)
    initial = torch.full((2, GRID), -1)
    initial[:, ::3] = 5  # inpainting: known codes are kept, the rest generated around them
    c = generate_images_ar(models["ar"], vocab, captions, GRID, generator=g(), initial=initial)
    assert (c[:, ::3] == 5).all() and (c >= 0).all()
    for bad, message in ((initial[0], r"must be \(captions, grid\)"), (initial + 64, r"in \[0, 64\)")):
        for sampler in (generate_images_ar, generate_images_mask):
            with pytest.raises(ValueError, match=message):
                sampler(models["ar"], vocab, captions, GRID, initial=bad)
    assert torch.equal(c[:, :1], initial[:, :1]) and not torch.equal(c, a)


def test_mask_generation_fills_every_code_deterministically_and_keeps_known_ones(setup):
    tok, vocab, models = setup
    captions = [tok.encode("a red circle"), []]
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    a = generate_images_mask(models["mask"], vocab, captions, GRID, steps=4, generator=g())
    b = generate_images_mask(models["mask"], vocab, captions, GRID, steps=4, generator=g())
    assert torch.equal(a, b) and a.shape == (2, GRID)
    assert a.min() >= 0 and a.max() < vocab.codebook_size
    initial = torch.full((2, GRID), -1)
    initial[:, :6] = 7
    c = generate_images_mask(
        models["mask"], vocab, captions, GRID, steps=4, guidance=0.0, generator=g(), initial=initial
    )
    assert (c[:, :6] == 7).all() and (c >= 0).all()


def test_schedule_and_sampling_rules():
    assert mask_schedule(0, 4) > mask_schedule(1, 4) > mask_schedule(3, 4) == pytest.approx(0.0, abs=1e-9)
    logits = torch.randn(5, 50)
    assert torch.equal(sample(logits, temperature=0.0), logits.argmax(-1))
    assert torch.equal(sample(logits, temperature=1.0, top_k=1), logits.argmax(-1))
    assert torch.equal(sample(logits, temperature=1.0, top_p=1e-6), logits.argmax(-1))


def test_a_generator_on_another_device_than_the_model_is_a_clear_error(setup):
    """torch's own error ('Expected a 'cuda' device type for generator') names no fix."""
    from types import SimpleNamespace

    from omni.generate import seeded_generator

    tok, vocab, models = setup
    elsewhere = SimpleNamespace(device=torch.device("cuda", 0))
    prompt = [image_prompt(vocab, [1] * GRID)]
    calls = [
        lambda g: generate_text(models["mask"], vocab, prompt, max_new_tokens=2, generator=g),
        lambda g: generate_images_mask(models["mask"], vocab, [[5]], GRID, steps=2, generator=g),
        lambda g: generate_images_ar(models["ar"], vocab, [[5]], GRID, generator=g),
    ]
    for call in calls:
        with pytest.raises(
            ValueError, match=r"generator is on cuda:0 but the model on cpu.*seeded_generator"
        ):
            call(elsewhere)
        call(seeded_generator(0, "cpu"))  # the model's device: fine


@pytest.mark.parametrize("mode", ["mask", "ar"])
def test_mask_generation_with_the_prompt_cached_equals_recomputation(setup, mode):
    """The prompt's keys and values computed once give the codes that recomputing every step gives
    (both models: "ar" carries image positions and the code appearance table), also with guidance
    and known codes."""
    import copy

    tok, vocab, models = setup
    model = copy.deepcopy(models[mode])
    with torch.no_grad():  # sharp attention: an untrained model's is flat, and would hide a wrong position
        for name, p in model.named_parameters():
            if "wqkv" in name:
                p.mul_(30)
    captions = [tok.encode("a red circle"), tok.encode("a blue square on the left of a green triangle")]
    initial = torch.full((2, GRID), -1)
    initial[1, ::4] = 9
    # A low temperature makes the picks follow the logits closely (an untrained model's are nearly flat).
    for options in (
        {"guidance": 2.0, "temperature": 0.05},
        {"guidance": 0.0, "initial": initial, "temperature": 0.05},
    ):
        runs = [
            generate_images_mask(
                model, vocab, captions, GRID, steps=6, generator=torch.Generator().manual_seed(5),
                use_cache=cached, **options,
            )
            for cached in (True, False)
        ]  # fmt: skip
        assert torch.equal(*runs), options


@pytest.mark.parametrize("mode", ["mask", "ar"])
def test_the_image_block_after_a_cached_prompt_gets_the_logits_of_the_whole_sequence(
    setup, mode, monkeypatch
):
    """What the cached mask sampler computes at each step, checked on the logits themselves, by
    the eager step and by the static-shape step (`Transformer.decode_step`, uncompiled here)."""
    import omni.generate
    from omni.generate import Decoder, layout

    monkeypatch.setattr(omni.generate, "_run_compiled_step", lambda model, *args: model.decode_step(*args))
    tok, vocab, models = setup
    model = models[mode]
    prompts = Grammar(vocab).guided_t2i_prompts(
        [tok.encode("a red circle"), tok.encode("a cyan square")], 2.0
    )
    batch = layout(prompts, GRID, vocab.special("pad"), new_image=(0, GRID))
    width = batch.tokens.shape[1]
    image = torch.randint(0, vocab.codebook_size, (len(prompts), GRID)) + vocab.image_offset
    with torch.no_grad():
        full = model(
            torch.cat([batch.tokens, image], 1),
            batch.vis,
            positions=batch.positions,
            image_index=batch.image_index,
        )[:, width:]
        for static in (False, True):
            decoder = Decoder(model, batch, compile=static)
            decoder.prefill()
            for _ in range(2):  # a second step writes the block again over the first
                cached = decoder.step(image, width)
            assert torch.allclose(cached, full, atol=1e-5), (static, (cached - full).abs().max())


def test_draw_follows_the_probabilities_and_never_picks_an_impossible_token():
    from omni.generate import draw

    probs = torch.tensor([[0.0, 0.7, 0.0, 0.3, 0.0]]).expand(20000, -1)
    picks = draw(probs, torch.Generator().manual_seed(0))
    counts = torch.bincount(picks, minlength=5).float() / len(picks)
    assert counts[[0, 2, 4]].sum() == 0
    assert abs(counts[1] - 0.7) < 0.02 and abs(counts[3] - 0.3) < 0.02
    # a one-hot row always gives its token, also unnormalised and at the last index
    assert draw(torch.tensor([[0.0, 0.0, 2.5]] * 50)).eq(2).all()


def sharpened(model):
    """A copy with sharp attention and logits: an untrained model's are nearly flat, and would let a
    wrong position or a wrong key go unnoticed."""
    import copy

    model = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "wqkv" in name or name == "output.weight":
                p.mul_(30)
    return model


def compiled_and_eager_runs(tok, vocab, models):
    """(name, compiled output, eager output) of each sampler, same seeds."""
    captions = [tok.encode("a red circle"), tok.encode("a blue square on the left of a green triangle")]
    codes = torch.randint(0, vocab.codebook_size, (3, GRID), generator=torch.Generator().manual_seed(1))
    prompts = [image_prompt(vocab, c.tolist()) for c in codes]
    initial = torch.full((2, GRID), -1)
    initial[1, ::4] = 9
    ar, mask = sharpened(models["ar"]), sharpened(models["mask"])
    # a prompt that fills all but 6 of the model's positions: padding for the compiled shape must stop there
    room = ar.config.max_seq_len - 6
    long = [Prompt(([t for t in tok.encode("a red circle") * room])[:room])]
    runs = {
        "text": lambda **o: generate_text(ar, vocab, prompts, max_new_tokens=8, temperature=0.7, **o),
        "text, long prompt": lambda **o: generate_text(
            ar, vocab, long, max_new_tokens=6, temperature=0.7, **o
        ),
        "ar": lambda **o: generate_images_ar(ar, vocab, captions, GRID, guidance=2.0, **o),
        "ar, inpainting": lambda **o: generate_images_ar(
            ar, vocab, captions, GRID, guidance=0.0, initial=initial, **o
        ),
        "mask": lambda **o: generate_images_mask(mask, vocab, captions, GRID, steps=4, **o),
    }
    for name, run in runs.items():
        yield (
            name,
            run(compile=True, generator=torch.Generator().manual_seed(3)),
            run(generator=torch.Generator().manual_seed(3)),
        )


def test_compiled_samplers_give_what_the_eager_ones_give(setup):
    """The static-shape step under torch.compile (text, ar, ar inpainting, mask): same seed, same
    tokens and codes as the eager samplers; a sampler that ignored the cache or shifted a position
    would differ (the models are sharpened)."""
    import omni.generate

    tok, vocab, models = setup
    for name, compiled, eager in compiled_and_eager_runs(tok, vocab, models):
        assert compiled == eager if name.startswith("text") else torch.equal(compiled, eager), name
    assert omni.generate._compile_failed is None  # it did compile (a C++ compiler is on every host we test)


def test_where_compiling_fails_the_samplers_warn_once_and_give_the_same_outputs(setup, monkeypatch):
    import torch._inductor.config

    import omni.generate

    monkeypatch.setattr(omni.generate, "_compiled_decode_step", None)
    monkeypatch.setattr(omni.generate, "_compile_failed", None)
    torch._dynamo.reset()  # forget what the test before compiled
    tok, vocab, models = setup
    # torch's own patch: monkeypatch's undo deletes a torch config entry instead of restoring it
    with (
        torch._inductor.config.patch({"cpp.cxx": (None, "/no/such/compiler")}),
        pytest.warns(UserWarning, match="torch.compile does not work here") as caught,
    ):
        for name, compiled, eager in compiled_and_eager_runs(tok, vocab, models):
            assert compiled == eager if name.startswith("text") else torch.equal(compiled, eager), name
    assert len([w for w in caught if "torch.compile" in str(w.message)]) == 1
    torch._dynamo.reset()


@pytest.mark.parametrize("mode", ["mask", "ar"])
def test_interleaved_output_is_well_formed_and_each_row_switches_on_its_own(setup, mode):
    tok, vocab, models = setup
    model, grammar = models[mode], Grammar(vocab)
    prompts = [
        grammar.prompt("lm", answer_start=tok.encode(t)) for t in ("a red", "draw", "two blue squares", "x")
    ]
    prompts.append(image_prompt(vocab, list(range(GRID))))  # a prompt that reads an image
    hook = eager_to_draw(model, vocab, boi=3.5, eos=2.0)
    try:
        budget = 3 * (GRID + 2) + 10
        outs = [
            generate_interleaved(
                model,
                vocab,
                prompts * 2,
                GRID,
                mode,
                max_new_tokens=budget,
                text_temperature=1.0,
                mask_steps=3,
                generator=torch.Generator().manual_seed(seed),
            )  # fmt: skip
            for seed in (0, 0, 1)
        ]
        assert outs[0] == outs[1] and outs[0] != outs[2]  # the seed decides, and only it
        kinds = []
        for row in outs[0] + outs[2]:
            assert len(row) <= budget
            parts = grammar.parts(row)  # raises on a block that is not closed
            for kind, ids in parts:
                if kind == "image":
                    assert len(ids) == GRID and all(0 <= c < vocab.codebook_size for c in ids)
                else:
                    assert vocab.is_text(torch.tensor(ids)).all()
            kinds.append([kind for kind, _ in parts])
        assert any(k.count("image") >= 2 for k in kinds) and any("image" not in k for k in kinds)
        assert any(k[:1] == ["text"] and "image" in k and k[-1] == "text" for k in kinds)
        # Greedy text and images: a row gives the same parts alone as in a batch of others.
        greedy = dict(text_temperature=0.0, temperature=0.0, mask_steps=3, max_new_tokens=budget)
        together = generate_interleaved(model, vocab, prompts, GRID, mode, **greedy)
        alone = [generate_interleaved(model, vocab, [p], GRID, mode, **greedy)[0] for p in prompts]
        assert together == alone and any(vocab.special("boi") in row for row in together)
    finally:
        hook.remove()


def test_image_blocks_split_from_text_and_unclosed_ones_are_refused(setup):
    _, vocab, _ = setup
    grammar = Grammar(vocab)
    boi, eoi = vocab.special("boi"), vocab.special("eoi")
    ids = [5, 6, boi, *vocab.image_ids(torch.tensor([1, 2])).tolist(), eoi, 7]
    assert grammar.parts(ids) == [("text", [5, 6]), ("image", [1, 2]), ("text", [7])]
    with pytest.raises(ValueError, match="not closed"):
        grammar.parts([5, boi, vocab.image_ids(3)])
