"""Grounded training: a tiny run logs its probes; a tiny model trained on layout-first documents
draws where a user's layout says."""

from __future__ import annotations

import csv
import random
import subprocess

import pytest
import torch
from conftest import REPO, tiny_train_command


@pytest.mark.slow
def test_a_grounded_run_trains_every_grounded_task_and_logs_its_probes(model_assets, tmp_path):
    out = tmp_path / "run"
    cmd = tiny_train_command(
        model_assets,
        out,
        "--trainer.max_steps=24",
        "--trainer.val_check_interval=12",
        "--data.ratios={t2i: 0.2, plan: 0.2, gcap: 0.2, ground: 0.2, region: 0.1, gvqa: 0.1}",
        "--data.location_bins=8",
        "--data.questions_per_image=2",
    )
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = list(csv.DictReader(open(next(out.glob("logs/version_*/metrics.csv")))))
    probes = [r for r in rows if r.get("val/grounding_acc")]
    assert len(probes) == 2 and all(r["val/relation_acc"] and r["val/grounded_relation_acc"] for r in probes)
    logged = {
        k.removeprefix("val/").removesuffix("_acc")
        for r in rows
        for k, v in r.items()
        if v and k.startswith("val/")
    }
    assert {"plan", "gcap", "ground", "region", "gvqa"} <= logged

    import omni

    assert omni.load_pretrained(out / "model").vocab.location_bins == 8


def test_a_tiny_model_trained_on_layouts_draws_where_a_given_layout_says(model_assets, tmp_path):
    """Layout-first documents (omni.grammar `plan`) with no caption: one object whose codes fill its
    box, the box one of the grid's quadrants. After a short training the release, given each
    quadrant as the user's layout (pipe.generate_images(layout=)), puts the object's codes inside
    the box and the background's outside: the layout alone decides where the object goes."""
    import omni
    from omni.assets import Assets
    from omni.attention import Visibility
    from omni.checkpoint import save_pretrained
    from omni.data.packing import Packer
    from omni.grammar import Grammar
    from omni.grounding import grounded_ids, layout_parts
    from omni.model import Architecture, Transformer
    from omni.training.loss import training_loss

    assets = Assets.load(model_assets.tokenizer, model_assets.vq, locations=8)
    vocab, encode, grammar = assets.vocab, assets.tokenizer.encode, Grammar(assets.vocab)
    side = assets.vq_config.grid  # 8x8 codes of 4 px
    half, cell = side // 2, 32 // side
    quadrants = [(c0, r0) for r0 in (0, half) for c0 in (0, half)]
    background, thing = 0, 1

    def document(corner: tuple[int, int]):
        c0, r0 = corner
        inside = [c0 <= c < c0 + half and r0 <= r < r0 + half for r in range(side) for c in range(side)]
        codes = [thing if i else background for i in inside]
        box = (c0 * cell, r0 * cell, (c0 + half) * cell, (r0 + half) * cell)
        layout = grounded_ids(vocab, encode, layout_parts([("red square", box)]), (32, 32))
        return grammar.document("plan", caption=[], layout=layout, image=codes), box, codes

    torch.manual_seed(0)
    arch = Architecture.from_name(
        "tiny", image_generation="ar", image_positions=True, n_layers=2, dim=64, n_heads=4
    )
    model = Transformer(assets.model_config(arch))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rng = random.Random(0)
    packer = Packer(seq_len=128, batch_size=8, pad_id=vocab.special("pad"))
    for _ in range(120):
        batch = packer.collate([[document(rng.choice(quadrants))[0]] for _ in range(8)])
        logits = model(
            batch["tokens"], Visibility(batch["doc"], batch["last"]), positions=batch["positions"],
            image_index=batch["image_index"],
        )  # fmt: skip
        loss, _ = training_loss(logits, batch["targets"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    save_pretrained(
        tmp_path / "model",
        model.state_dict(),
        model.config,
        assets,
        {"temperature": 0.0, "guidance_scale": 0.0},
    )
    pipe = omni.load_pretrained(tmp_path / "model")
    layouts = [[("red square", document(q)[1])] for q in quadrants]
    prompts = pipe._planned([""] * 4, layouts)
    drawn = pipe._image_codes(prompts, None, 0.0, 0.0, pipe._generator(0))  # what generate_images decodes
    for q, codes in zip(quadrants, drawn.tolist()):
        truth = document(q)[2]
        agree = sum(a == b for a, b in zip(codes, truth)) / len(truth)
        assert agree >= 0.95, (q, codes)
    assert len(pipe.generate_images([""], layout=layouts[:1])) == 1
