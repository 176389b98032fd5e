"""LoRA fine-tuning (omni.training.lora, peft): adapters on the projections, everything else
frozen, merged into a plain release that gives the adapted model's logits."""

from __future__ import annotations

import subprocess

import pytest
import torch
from conftest import REPO, tiny_model, tiny_train_command

import omni
from omni.checkpoint import load_model
from omni.grammar import Grammar
from omni.model import Transformer
from omni.training.lora import LoraSettings, add_lora, merged_state_dict

pytest.importorskip("peft")


def test_adapters_train_alone_and_merge_into_the_plain_weights(model_assets):
    torch.manual_seed(0)
    model, assets = tiny_model(model_assets)
    model.eval()
    doc = Grammar(assets.vocab).document("caption", image=list(range(64)), caption=[5, 6, 7])
    tokens = torch.tensor([doc.tokens])
    before = model(tokens).detach()
    trainable = add_lora(model, LoraSettings(rank=4, train=["embedding"]))
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n or n.startswith("embedding") for n in names)
    assert any(".wqkv.lora_A" in n for n in names) and any(".w2.lora_B" in n for n in names)
    assert trainable == sum(p.numel() for n, p in model.named_parameters() if n in names)
    torch.testing.assert_close(model(tokens), before)  # B starts at zero: the same model
    with torch.no_grad():  # as if trained
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05)
    adapted = model(tokens)
    assert not torch.allclose(adapted, before, atol=1e-3)
    plain = Transformer(model.config).eval()
    plain.load_state_dict(merged_state_dict(model), strict=True)
    torch.testing.assert_close(plain(tokens), adapted, atol=1e-5, rtol=1e-4)
    assert any("lora_" in n for n, _ in model.named_parameters())  # merging left the model as it was


def test_bad_settings_are_refused_naming_the_layers(model_assets):
    model, _ = tiny_model(model_assets)
    with pytest.raises(ValueError, match=r"\['wk'\] name no linear layer"):
        add_lora(model, LoraSettings(targets=["wqkv", "wk"]))
    with pytest.raises(ValueError, match="rank >= 1"):
        LoraSettings(rank=0)


def test_a_lora_run_releases_plain_weights_that_moved_only_through_adapters(
    model_assets, tiny_releases, tmp_path
):
    out = tmp_path / "lora"
    cmd = tiny_train_command(
        model_assets, out, f"--model.init_from={tiny_releases['ar']}", "--model.transformer.n_kv_heads=2",
        "--trainer.max_steps=6", "--model.ema_decay=0", "--model.lora.rank=4", "--model.lr=0.01",
    )  # fmt: skip
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "LoRA:" in res.stderr and "weights train" in res.stderr
    start, tuned = load_model(tiny_releases["ar"]), load_model(out / "model")  # plain names, no peft
    moved = {n for n, p in tuned.state_dict().items() if not torch.equal(p, start.state_dict()[n])}
    assert moved and all(n.rsplit(".", 2)[-2] in ("wqkv", "wo", "w13", "w2") for n in moved), sorted(moved)[
        :5
    ]
    assert omni.load_pretrained(out / "model").generate_text(["a red"])  # a plain release
