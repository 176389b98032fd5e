"""Instruction tuning: a release whose vocabulary predates conversations starts a chat run (the
new token's rows the mean of the old, every other row moved to its token's new id), trains on
dialogue shards beside plain ones, and the result chats: well-formed turns, scored by the
benchmark's dialogue metrics."""

from __future__ import annotations

import subprocess

import pytest
import torch
from conftest import REPO, eager_to_draw, tiny_train_command
from PIL import Image

import omni
from omni.assets import Assets
from omni.checkpoint import load_initial_weights, load_model
from omni.model import Architecture, Transformer
from omni.shapes.benchmark import benchmark_dialogues
from omni.vocab import VocabError


def test_a_release_without_conversations_starts_a_chat_run_row_by_row(tiny_releases, model_assets):
    release = tiny_releases["ar"]
    theirs = load_model(release)
    old = omni.load_pretrained(release).vocab
    assets = Assets.load(model_assets.tokenizer, model_assets.vq, conversations=True)
    arch = Architecture.from_name("tiny", image_generation="ar", image_positions=True, image_features=True)
    model = Transformer(assets.model_config(arch))
    assert load_initial_weights(model, assets.vocab, release) == []
    new = assets.vocab
    for name in ("embedding.weight", "output.weight"):
        ours, before = model.state_dict()[name], theirs.state_dict()[name]
        assert torch.equal(ours[: new.text_size], before[: old.text_size])
        assert torch.equal(ours[new.image_offset :], before[old.image_offset :])
        assert torch.equal(ours[new.special("boi")], before[old.special("boi")])
        torch.testing.assert_close(ours[new.special("chat")], before.mean(0))


def test_sft_on_dialogues_gives_a_model_that_chats(tiny_releases, model_assets, dialogue_assets, tmp_path):
    out = tmp_path / "sft"
    cmd = tiny_train_command(
        model_assets, out, f"--model.init_from={tiny_releases['ar']}", "--trainer.max_steps=12",
        "--trainer.val_check_interval=12",
        "--model.transformer.n_kv_heads=2",  # the tiny preset's
        "--model.transformer.max_seq_len=256",
        "--data.seq_len=256",
        f"--data.train_shards=[{model_assets.codes}/train-*.tar, {dialogue_assets.codes}/train-*.tar]",
        f"--data.val_shards=[{model_assets.codes}/val-*.tar, {dialogue_assets.codes}/val-*.tar]",
        "--data.ratios={t2i: 1.0, caption: 1.0, chat: 1.0}", "--model.task_weights={chat: 1.0}",
    )  # fmt: skip
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "started from the weights of" in res.stderr and "chat_acc" in res.stdout + res.stderr
    pipe = omni.load_pretrained(out / "model")
    assert pipe.vocab.conversations
    hook = eager_to_draw(pipe.model, pipe.vocab, boi=3.0, eos=1.0)
    try:
        replies = pipe.chat(
            [
                [("user", "draw a red circle on the left")],
                [("user", [Image.new("RGB", (32, 32)), "what color?"])],
            ],
            text_temperature=1.0,
        )
        report = benchmark_dialogues(pipe, str(dialogue_assets.images / "val-*.tar"), n=3, batch_size=4)
    finally:
        hook.remove()
    assert len(replies) == 2 and all(isinstance(p, str) or p.size == (32, 32) for r in replies for p in r)
    rates = [v for k, v in report.items() if k.startswith("dialogue_") and isinstance(v, float)]
    assert report["dialogue_turns"] >= 6 and rates and all(0.0 <= v <= 1.0 for v in rates)
    assert report["dialogue_draws_when_asked"] is not None and report["dialogue_draws_unasked"] is not None


def test_chat_on_a_model_without_conversations_says_how_to_get_one(tiny_releases):
    pipe = omni.load_pretrained(tiny_releases["mask"])
    with pytest.raises(VocabError, match="not trained on conversations.*sft.yaml"):
        pipe.chat([[("user", "draw a red circle")]])
