"""The Transformer: config checks, both generation modes learn, KV-cache decoding, options."""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch

from omni.attention import Visibility
from omni.data.packing import Packer, TaskBuilder
from omni.model import PRESETS, Architecture, KVCache, ModelConfig, Transformer, apply_rotary
from omni.tokenizers.text import TextTokenizer
from omni.training.loss import token_losses, training_loss
from omni.vocab import Vocab


def test_config_validation_and_presets():
    with pytest.raises(ValueError, match="not divisible by n_heads"):
        ModelConfig(dim=100, n_heads=3)
    with pytest.raises(ValueError, match="image_generation"):
        ModelConfig(image_generation="diffusion")
    with pytest.raises(ValueError, match="unknown model preset"):
        ModelConfig.from_name("7b")
    with pytest.raises(ValueError, match="model.vocab_size must be >= 1"):
        ModelConfig()  # a complete config: the vocabulary's size is a fact, not a placeholder
    assert Architecture.from_name("shapes").dim == 192  # what a training config chooses
    counts = {}
    for name in PRESETS:
        vocab_size = 1024 if name in ("tiny", "shapes") else 32768
        with torch.device("meta"):  # no memory: the 1B preset is only counted
            counts[name] = Transformer(ModelConfig.from_name(name, vocab_size=vocab_size)).num_params(
                embedding=True
            )
    assert counts["tiny"] < 1e6 < counts["shapes"] < 1e7
    assert 0.9e8 < counts["100m"] < 1.5e8 and 0.8e9 < counts["1b"] < 1.3e9


def loss_of(model, batch, vis, **kwargs):
    """The training loss (omni.training.loss) of `model` on a packed batch."""
    logits = model(batch["tokens"], vis, positions=batch["positions"], **kwargs)
    return training_loss(logits, batch["targets"], batch["task"], z_loss=model.config.z_loss)[0]


def tiny_batch(model_assets, mode: str, seed: int = 0, tasks=("t2i", "caption")):
    tok = TextTokenizer.from_file(model_assets.tokenizer)
    vocab = Vocab.build(tok, codebook_size=64)
    b = TaskBuilder(vocab, tok, mode, caption_dropout=0.0)
    rng = random.Random(seed)
    captions = ["a red circle", "a blue square on the left", "a green triangle above a red circle"]
    docs = []
    for i, caption in enumerate(captions):
        codes = [(7 * i + j) % 64 for j in range(16)]
        sample = {"key": str(i), "codes": codes, "text": caption, "qa": []}
        docs += [b.build(sample, task, rng) for task in tasks]
    packer = Packer(seq_len=96, batch_size=8, pad_id=vocab.special("pad"))
    batches = [x for d in docs for x in packer.add(d)] + packer.flush()
    return vocab, batches[0]


@pytest.mark.parametrize("mode", ["mask", "ar"])
def test_loss_falls_on_a_tiny_batch(model_assets, mode):
    torch.manual_seed(0)
    vocab, batch = tiny_batch(model_assets, mode)
    model = Transformer(
        ModelConfig.from_name("tiny", vocab_size=vocab.size, image_generation=mode, qk_norm=True, z_loss=1e-4)
    )
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    vis = Visibility(batch["doc"], batch["last"])
    losses = []
    for _ in range(40):
        loss = loss_of(model, batch, vis)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses[::8]


def test_kv_cache_decoding_equals_the_full_forward(model_assets):
    """ar mode: prefill a packed prefix, then one token at a time; logits match a full pass."""
    torch.manual_seed(0)
    vocab, batch = tiny_batch(model_assets, "ar", tasks=("t2i",))  # (mmu images are bidirectional)
    config = ModelConfig.from_name("tiny", vocab_size=vocab.size, image_generation="ar")  # GQA: 4 heads, 2 kv
    model = Transformer(config).eval()
    tokens, positions = batch["tokens"][:2], batch["positions"][:2]
    vis = Visibility(batch["doc"][:2], batch["last"][:2])
    with torch.no_grad():
        full = model(tokens, vis, positions=positions)
        cache = KVCache(config, batch=2, max_len=tokens.shape[1])
        prefix = 30
        steps = [model(tokens[:, :prefix], vis, positions=positions[:, :prefix], cache=cache, start=0)]
        for i in range(prefix, tokens.shape[1]):
            steps.append(
                model(tokens[:, i : i + 1], vis, positions=positions[:, i : i + 1], cache=cache, start=i)
            )
    incremental = torch.cat(steps, dim=1)
    assert torch.allclose(incremental, full, atol=1e-4), (incremental - full).abs().max()
    with pytest.raises(ValueError, match="KV cache holds"):
        model(tokens[:, :4], vis, cache=KVCache(config, 2, 8), start=6)


def test_image_positions_and_code_appearance_table(model_assets):
    torch.manual_seed(0)
    vocab, batch = tiny_batch(model_assets, "mask")
    tokens, positions, index = batch["tokens"], batch["positions"], batch["image_index"]
    vis = Visibility(batch["doc"], batch["last"])
    base = ModelConfig.from_name("tiny", vocab_size=vocab.size)
    config = dataclasses.replace(base, image_positions=16, image_codes=64, image_features=12)
    with pytest.raises(ValueError, match="image_features must be >= 0"):
        dataclasses.replace(config, image_features=-1)  # no placeholders: omni.assets resolves them
    with pytest.raises(ValueError, match="image_features needs 0 < image_codes"):
        dataclasses.replace(config, image_codes=0)
    plain, model = Transformer(base).eval(), Transformer(config).eval()
    model.load_state_dict(plain.state_dict(), strict=False)
    model.code_features.normal_()
    with torch.no_grad():
        model.image_position.weight.zero_()
        # The table's projections start at zero: the model starts as the plain one.
        assert torch.allclose(
            model(tokens, vis, positions=positions, image_index=index),
            plain(tokens, vis, positions=positions),
        )
        torch.nn.init.normal_(model.code_readout.weight, std=0.1)
        out = model(tokens, vis, positions=positions, image_index=index)
        ref = plain(tokens, vis, positions=positions)
    codes = slice(vocab.size - 64, vocab.size)
    assert torch.allclose(out[..., : codes.start], ref[..., : codes.start])  # text logits untouched
    assert not torch.allclose(out[..., codes], ref[..., codes])  # code logits score the predicted look
    with torch.no_grad():
        model.code_readout.weight.zero_()
        model.image_position.weight.normal_()
        moved = model(tokens, vis, positions=positions, image_index=index)
    first_image = int((index[0] >= 0).nonzero()[0])  # positions reach a token from the first image code on
    assert torch.allclose(moved[0, :first_image], ref[0, :first_image], atol=1e-5)
    assert not torch.allclose(moved[0, first_image], ref[0, first_image])
    with pytest.raises(ValueError, match="longer than the model's image_positions 16"):
        model(tokens[:, :4], vis, image_index=torch.full((tokens.shape[0], 4), 16))
    assert model.num_params() == plain.num_params() + 2 * 12 * config.dim


def test_grid_rotary_turns_image_tokens_by_row_and_column():
    config = ModelConfig.from_name("tiny", vocab_size=300, image_positions=16, grid_rotary=True)
    model, plain = Transformer(config), Transformer(dataclasses.replace(config, grid_rotary=False))
    # Two documents: text, then a 4x4 image from position 3 (row) and position 7 (second row).
    positions = torch.tensor([list(range(24)), list(range(24))])
    index = torch.full((2, 24), -1)
    index[0, 3:19], index[1, 7:23] = torch.arange(16), torch.arange(16)
    cos, sin = model.rotary(positions, index)
    cos0, sin0 = plain.rotary(positions, index)
    text = index < 0
    assert torch.equal(cos[text], cos0[text]) and torch.equal(sin[text], sin0[text])
    assert not torch.allclose(cos[~text], cos0[~text])

    def score(row, a, b):  # one head's attention logit between tokens a and b of a row
        q, k = torch.ones(1, 24, 1, config.head_dim), torch.ones(1, 24, 1, config.head_dim)
        q = apply_rotary(q, cos[row : row + 1], sin[row : row + 1])
        k = apply_rotary(k, cos[row : row + 1], sin[row : row + 1])
        return float(q[0, a, 0] @ k[0, b, 0])

    # codes (0,0)->(1,1) in one image and (2,1)->(3,2) in the other: the same offset, the same logit
    assert score(0, 3, 3 + 5) == pytest.approx(score(1, 7 + 9, 7 + 14), abs=1e-5)
    # index 3 -> 4 is one step in raster order, but a row down and three columns left
    assert score(0, 3 + 3, 3 + 4) != pytest.approx(score(0, 3 + 4, 3 + 5), abs=1e-3)
    with pytest.raises(ValueError, match="grid_rotary needs image_positions on a square grid"):
        ModelConfig.from_name("tiny", vocab_size=300, image_positions=12, grid_rotary=True)


def test_activation_checkpointing_gives_the_same_gradients(model_assets):
    torch.manual_seed(0)
    vocab, batch = tiny_batch(model_assets, "mask")
    model = Transformer(ModelConfig.from_name("tiny", vocab_size=vocab.size))
    vis = Visibility(batch["doc"], batch["last"])
    grads = []
    for flag in (False, True):
        model.zero_grad()
        model.activation_checkpointing = flag
        loss_of(model, batch, vis).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads))


def test_token_losses_match_cross_entropy():
    logits = torch.randn(2, 5, 11)
    targets = torch.tensor([[1, -100, 3, 4, -100], [-100, -100, 0, 10, 2]])
    out = token_losses(logits, targets)
    keep = targets != -100
    expected = torch.nn.functional.cross_entropy(logits[keep], targets[keep], reduction="none")
    assert torch.allclose(out.ce, expected, atol=1e-5)
    assert torch.equal(out.correct, logits[keep].argmax(-1) == targets[keep])
    assert torch.allclose(out.lse_sq, logits[keep].logsumexp(-1) ** 2)


@pytest.mark.cuda
def test_gpu_backends_agree_in_the_model_and_bf16_trains(model_assets):
    """flex (and xformers where installed) vs sdpa through the whole model, forward and backward."""
    from omni.attention import available_backends

    torch.manual_seed(0)
    vocab, batch = tiny_batch(model_assets, "mask")
    batch = {k: v.cuda() if torch.is_tensor(v) else v for k, v in batch.items()}
    vis = Visibility(batch["doc"], batch["last"])
    reference = Transformer(ModelConfig.from_name("tiny", vocab_size=vocab.size, attention="sdpa")).cuda()
    loss = loss_of(reference, batch, vis)
    loss.backward()
    for backend in available_backends("cuda"):
        if backend == "sdpa":
            continue
        other = Transformer(ModelConfig.from_name("tiny", vocab_size=vocab.size, attention=backend)).cuda()
        other.load_state_dict(reference.state_dict())
        loss2 = loss_of(other, batch, vis)
        loss2.backward()
        assert torch.allclose(loss, loss2, atol=1e-4), backend
        for (name, a), b in zip(reference.named_parameters(), other.parameters()):
            assert torch.allclose(a.grad, b.grad, atol=1e-4, rtol=1e-3), (backend, name)
    model = Transformer(
        ModelConfig.from_name("tiny", vocab_size=vocab.size, qk_norm=True, z_loss=1e-4)
    ).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, fused=True)
    losses = []
    for _ in range(30):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = loss_of(model, batch, vis)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0], losses[::6]
