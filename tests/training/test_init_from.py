"""`--model.init_from`: a run that starts from a release continues from its loss, not from scratch;
one that starts from a Hugging Face LLM converted by omni.convert trains on image shards with the
image parts it adds; a folder of another size is refused, naming the fields."""

from __future__ import annotations

import csv
import subprocess

import pytest
from conftest import REPO, tiny_train_command


def train(model_assets, out, *extra) -> tuple[subprocess.CompletedProcess, list[float]]:
    cmd = tiny_train_command(
        model_assets, out, "--model.ema_decay=0", "--trainer.log_every_n_steps=1", *extra
    )
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    logs = list(out.glob("logs/version_*/metrics.csv"))
    rows = list(csv.DictReader(open(logs[0]))) if logs else []
    return res, [float(r["train/loss"]) for r in rows if r.get("train/loss")]


def val_loss(model_assets, out, *extra) -> float:
    """`train.py validate` of the tiny config: its val/loss (the same validation batches every run)."""
    cmd = tiny_train_command(model_assets, out, "--model.ema_decay=0", *extra)
    cmd[cmd.index("fit")] = "validate"
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    (rows,) = [
        r for r in csv.DictReader(open(next(out.glob("logs/version_*/metrics.csv")))) if r.get("val/loss")
    ]
    return float(rows["val/loss"])


@pytest.mark.slow
def test_fine_tuning_a_release_continues_from_its_loss(model_assets, tmp_path):
    res, _ = train(model_assets, tmp_path / "a", "--trainer.max_steps=40", "--trainer.val_check_interval=40")
    assert res.returncode == 0, res.stderr[-3000:]
    rows = list(csv.DictReader(open(next((tmp_path / "a").glob("logs/version_*/metrics.csv")))))
    trained = [float(r["val/loss"]) for r in rows if r.get("val/loss")][-1]  # after step 40: the release
    release = tmp_path / "a" / "model"
    started = val_loss(model_assets, tmp_path / "b", f"--model.init_from={release}")
    scratch = val_loss(model_assets, tmp_path / "c")
    # Within 1 % of the trained run's last validation (that one runs inside fit; this is `validate`
    # of the release), far from a fresh model's.
    assert started == pytest.approx(trained, rel=1e-2) and started < 0.8 * scratch, (
        trained,
        started,
        scratch,
    )

    res, tuned = train(model_assets, tmp_path / "d", "--trainer.max_steps=3", f"--model.init_from={release}")
    assert res.returncode == 0 and "started from the weights of" in res.stderr, res.stderr[-3000:]
    res, _ = train(model_assets, tmp_path / "e", "--trainer.max_steps=1", "--model.transformer.dim=32",
                   f"--model.init_from={release}")  # fmt: skip
    assert res.returncode == 2
    assert "holds a model with dim 64" in res.stderr and "--model.transformer.dim 64" in res.stderr


@pytest.mark.slow
def test_a_converted_hf_llm_trains_on_image_shards(model_assets, tmp_path, shapes_dir):
    pytest.importorskip("transformers")
    from conftest import hf_tokenizer_file, tiny_llama

    from omni.convert import from_hf

    tokenizer = hf_tokenizer_file(shapes_dir, tmp_path / "tok")
    tiny_llama(tmp_path / "hf", tokenizer, tied=True, vocab_rows=200)
    from_hf(tmp_path / "hf", tmp_path / "omni", vq=model_assets.vq)
    res, losses = train(
        model_assets,
        tmp_path / "run",
        "--trainer.max_steps=10",
        f"--model.init_from={tmp_path / 'omni'}",
        f"--data.tokenizer={tmp_path / 'omni' / 'tokenizer.json'}",
        f"--data.vq={tmp_path / 'omni' / 'vq'}",
        "--model.transformer.n_kv_heads=2",
        "--model.transformer.hidden_dim=160",
        "--model.transformer.rope_base=500000",
        "--model.transformer.norm_eps=1e-5",
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert (
        "new parts start fresh" in res.stderr
    )  # the shapes config adds image positions and the appearance table
    assert len(losses) == 10 and losses[-1] < losses[0]
