"""Samplers: KV-cached paths equal recomputation, padding-correct batching, constraints, determinism."""

from __future__ import annotations

import pytest
import torch

from omni.generate import (
    Prompt,
    generate_images_ar,
    generate_images_mask,
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
    # Learned image positions in both, and the code appearance table (random here, with its
    # zero-initialised projections made non-zero) in ar: the samplers must feed them alike.
    models = {
        mode: Transformer(
            ModelConfig.from_name(
                "tiny",
                vocab_size=vocab.size,
                image_generation=mode,
                image_positions=GRID,
                image_codes=64 if mode == "ar" else 0,
                image_features=12 if mode == "ar" else 0,
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
def test_the_image_block_after_a_cached_prompt_gets_the_logits_of_the_whole_sequence(setup, mode):
    """What the cached mask sampler computes at each step, checked on the logits themselves."""
    from omni.generate import layout, prefill

    tok, vocab, models = setup
    model = models[mode]
    prompts = Grammar(vocab).guided_t2i_prompts(
        [tok.encode("a red circle"), tok.encode("a cyan square")], 2.0
    )
    batch = layout(prompts, GRID + 1, vocab.special("pad"), new_image=(0, GRID))
    width = batch.tokens.shape[1]
    image = torch.randint(0, vocab.codebook_size, (len(prompts), GRID)) + vocab.image_offset
    block = torch.cat([image, torch.full((len(prompts), 1), vocab.special("eoi"))], dim=1)
    with torch.no_grad():
        full = model(
            torch.cat([batch.tokens, block], 1),
            batch.vis,
            positions=batch.positions,
            image_index=batch.image_index,
        )
        cache, _ = prefill(model, batch, GRID + 1, use_cache=True)
        cached = model(
            block, batch.vis, positions=batch.positions[:, width:], cache=cache, start=width,
            image_index=batch.image_index[:, width:],
        )  # fmt: skip
    assert torch.allclose(cached, full[:, width:], atol=1e-5), (cached - full[:, width:]).abs().max()
