"""Resume after kill -9: train.py and tokenizers/train_vq.py are killed mid-run and resumed with
`--ckpt_path last`; steps, schedule, optimizer state and the release folder must survive."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, tiny_train_command, tiny_vq_config

INTERVAL = 25  # checkpoint every this many steps


def released_step(folder: Path) -> int:
    """trained_steps of a release folder, -1 while there is none yet."""
    try:
        return json.loads((folder / "config.json").read_text())["trained_steps"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return -1


def logged(run: Path, version: int) -> list[dict]:
    """Rows of a CSVLogger metrics file (flushed every step in these runs)."""
    path = run / "logs" / f"version_{version}" / "metrics.csv"
    if not path.is_file():
        return []
    with open(path) as f:
        return list(csv.DictReader(f))


def by_step(rows: list[dict], key: str) -> dict[int, float]:
    return {int(r["step"]): float(r[key]) for r in rows if r.get(key)}


def start_then_kill(cmd: list[str], run: Path, release: Path, log: Path, per_batch: int = 1) -> int:
    """Start a training run, SIGKILL it a few steps after its second checkpoint; the last step it logged.

    Logs count batches; checkpoints and releases count optimizer steps, `per_batch` to a batch.
    """
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"the run ended before it was killed:\n{log.read_text()[-3000:]}")
            saved = released_step(release) // per_batch
            steps = by_step(logged(run, 0), "lr")
            # Kill well between two checkpoints: 10 steps past one and not close to the next,
            # where the release may already be newer than last.ckpt (it is exported first).
            if saved >= 2 * INTERVAL and steps and saved + 10 <= max(steps) < saved + INTERVAL - 5:
                break
            time.sleep(0.05)
        else:
            pytest.fail("no checkpoint within 5 minutes")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    # Whatever the kill interrupted, the release folder holds a checkpoint's weights, whole.
    assert released_step(release) % (INTERVAL * per_batch) == 0
    return max(by_step(logged(run, 0), "lr"))


def checkpoint_state(run: Path) -> dict:
    """The last Lightning checkpoint of a run (our own file from this test, so unpickling it is fine)."""
    import torch

    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def compare(before: list[dict], after: list[dict], key: str, resumed_at: int) -> tuple[float, float, float]:
    """Mean `key` over the first 3 steps, and over the 8 steps from `resumed_at` before and after the kill."""
    first, second = by_step(before, key), by_step(after, key)
    window = range(resumed_at, resumed_at + 8)
    return (
        mean(v for s, v in first.items() if s < 3),
        mean(first[s] for s in window if s in first),
        mean(second[s] for s in window if s in second),
    )


def check_continues(run: Path, killed_at: int, loss_key: str) -> dict:
    """The resumed run picks up at the checkpoint with the same schedule and a trained model's loss."""
    before, after = logged(run, 0), logged(run, 1)
    lr_before, lr_after = by_step(before, "lr"), by_step(after, "lr")
    resumed_at = min(lr_after)
    # Steps continue from a checkpoint at most one interval back; nothing is repeated from 0.
    assert resumed_at % INTERVAL == 0 and resumed_at >= INTERVAL
    lost = killed_at + 1 - resumed_at
    assert 0 < lost <= INTERVAL
    # The learning-rate schedule is restored: the same rate at the same step as before the kill.
    for step in range(resumed_at, killed_at + 1):
        assert lr_after[step] == pytest.approx(lr_before[step], rel=1e-6), step
    # Weights and optimizer state are restored: over the steps both runs made (from the
    # checkpoint to the kill) the loss is the same up to the data's noise, far from a fresh start's.
    fresh, trained, resumed = compare(before, after, loss_key, resumed_at)
    assert trained < fresh
    assert abs(resumed - trained) < 0.3 * (fresh - trained), (fresh, trained, resumed)
    return {"resumed_at": resumed_at, "lost": lost, "fresh": fresh, "trained": trained, "resumed": resumed}


@pytest.mark.slow
def test_train_py_resumes_after_kill_9(model_assets, tmp_path):
    import omni

    run = tmp_path / "run"
    cmd = tiny_train_command(
        model_assets,
        run,
        "--model.ema_decay=0.9",
        "--model.decay_steps=2000",  # the schedule must not change when the resumed run stops sooner
        "--trainer.max_steps=2000",
        "--trainer.val_check_interval=1000",
        "--trainer.log_every_n_steps=1",
        "--trainer.logger.init_args.flush_logs_every_n_steps=1",
        f"--trainer.callbacks.init_args.every_n_train_steps={INTERVAL}",
    )
    killed_at = start_then_kill(cmd, run, run / "model", tmp_path / "first.log")
    omni.load_pretrained(run / "model")
    # What there is to restore is in the checkpoint: AdamW moments for every weight, and the EMA.
    ckpt = checkpoint_state(run)
    weights = [k for k in ckpt["state_dict"] if k.startswith("model.")]
    assert len([k for k in ckpt["state_dict"] if k.startswith("ema.")]) == len(weights)
    (adam,) = ckpt["optimizer_states"]
    assert sum(len(g["params"]) for g in adam["param_groups"]) == len(adam["state"]) > 0
    assert all({"exp_avg", "exp_avg_sq", "step"} <= set(v) for v in adam["state"].values())
    stop = killed_at + 10
    res = subprocess.run(
        [*cmd, f"--trainer.max_steps={stop}", "--ckpt_path=last"], cwd=REPO, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr[-3000:]
    figures = check_continues(run, killed_at, "train/t2i_loss")
    assert released_step(run / "model") == stop
    omni.load_pretrained(run / "model")
    print(f"train.py kill -9: {figures}")


@pytest.mark.slow
def test_vq_trainer_resumes_after_kill_9(shapes_dir, tmp_path):
    from omni.tokenizers import load_vq

    config = tiny_vq_config(tmp_path, shapes_dir, in_memory=True)
    run, release = tmp_path / "run", tmp_path / "vq"
    cmd = [
        sys.executable,
        str(REPO / "tokenizers/train_vq.py"),
        "fit",
        "--config",
        config,
        "--model.disc_start=0",  # the discriminator and its optimizer train from the start
        "--model.warmup_steps=80",  # still warming up at the kill: a restarted schedule would show
        "--trainer.max_steps=2000",
        "--trainer.val_check_interval=1000",
        "--trainer.log_every_n_steps=1",
        "--trainer.logger.init_args.flush_logs_every_n_steps=1",
        # With the GAN on, each batch steps both optimizers: Lightning's step counts 2 per batch.
        f"--trainer.callbacks.init_args.every_n_train_steps={2 * INTERVAL}",
    ]
    killed_at = start_then_kill(cmd, run, release, tmp_path / "first.log", per_batch=2)
    load_vq(release)
    # What there is to restore: the discriminator, both optimizers, the codebook's usage EMA.
    ckpt = checkpoint_state(run)
    assert any(k.startswith("discriminator.") for k in ckpt["state_dict"])
    assert any(k.endswith("usage_ema") for k in ckpt["state_dict"])
    assert len(ckpt["optimizer_states"]) == 2 and all(o["state"] for o in ckpt["optimizer_states"])
    stop = 2 * (killed_at + 10)
    res = subprocess.run(
        [*cmd, f"--trainer.max_steps={stop}", "--ckpt_path=last"], cwd=REPO, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr[-3000:]
    figures = check_continues(run, killed_at, "train/rec_loss")
    # The discriminator came back trained too: its loss continues rather than restarting.
    d_fresh, d_trained, d_resumed = compare(
        logged(run, 0), logged(run, 1), "train/d_loss", figures["resumed_at"]
    )
    assert abs(d_resumed - d_trained) < max(0.5 * abs(d_fresh - d_trained), 0.05), (
        d_fresh,
        d_trained,
        d_resumed,
    )
    load_vq(release)
    print(f"train_vq.py kill -9: {figures}, d_loss {d_fresh:.3f} -> {d_trained:.3f} -> {d_resumed:.3f}")
