"""tokenizers/train_vq.py end to end on a few steps: checkpoints, export, load, evaluate, resume."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO, tiny_vq_config

from omni.release import read_marker
from omni.tokenizers import load_vq


def _train(config: str, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO / "tokenizers/train_vq.py"), "fit", "--config", config, *extra]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)


@pytest.mark.slow
@pytest.mark.parametrize("in_memory", [True, False])
def test_train_export_evaluate_and_resume(tmp_path, shapes_dir, in_memory):
    config = tiny_vq_config(tmp_path, shapes_dir, in_memory=in_memory)
    # The streaming run also exercises the GAN (from step 60, adaptive weight) and the SSIM loss.
    gan = [] if in_memory else ["--model.disc_start", "60", "--model.perceptual", "ssim"]
    res = _train(config, *gan, "--progress.every_seconds", "0.5")
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "run/checkpoints/last.ckpt").is_file()
    lines = [line for line in res.stdout.splitlines() if line.startswith("[train")]  # no bar: progress lines
    assert len(lines) >= 2 and all(" min | loss " in line and "psnr" in line for line in lines[:-1]), lines
    assert lines[-1].startswith("[train done] step ") and "/" in lines[-1].split()[3]
    vq = load_vq(tmp_path / "vq")
    assert vq.config.codebook_size == 64
    assert json.loads((tmp_path / "vq/config.json").read_text())["trained_steps"] == 100
    # A fixed number of steps, all trained: the release says so (the demo's summary reads it).
    marker = read_marker(tmp_path / "vq")
    assert (marker["trained_steps"], marker["planned_steps"], marker["stopped_by_time_limit"]) == (
        100,
        100,
        False,
    )
    assert "warning: the time limit" not in res.stdout + res.stderr
    if not in_memory:
        metrics = (tmp_path / "run/logs/version_0/metrics.csv").read_text().splitlines()
        header = metrics[0].split(",")
        d_col = header.index("train/d_loss")
        d_losses = [line.split(",")[d_col] for line in metrics[1:] if line.split(",")[d_col]]
        assert d_losses, "the discriminator never trained"
        return
    ev = subprocess.run(
        [
            sys.executable,
            str(REPO / "tokenizers/eval_vq.py"),
            "--vq",
            str(tmp_path / "vq"),
            "--shards",
            str(shapes_dir / "val-*.tar"),
        ],
        capture_output=True,
        text=True,
    )
    assert ev.returncode == 0, ev.stderr[-2000:]
    report = json.loads(ev.stdout)
    assert report["n"] == 50 and set(report) >= {"psnr", "ssim", "usage", "perplexity", "scene_accuracy"}
    assert 0 <= report["usage"] <= 1 and 0 <= report["scene_accuracy"] <= 1 and report["psnr"] > 15
    # Resume from the last checkpoint and train 10 more steps.
    res = _train(
        config, "--trainer.max_steps", "110", "--ckpt_path", str(tmp_path / "run/checkpoints/last.ckpt")
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads((tmp_path / "vq/config.json").read_text())["trained_steps"] == 110


def test_eval_vq_reports_a_bad_folder_clearly(tmp_path, shapes_dir):
    ev = subprocess.run(
        [
            sys.executable,
            str(REPO / "tokenizers/eval_vq.py"),
            "--vq",
            str(tmp_path / "none"),
            "--shards",
            str(shapes_dir / "val-*.tar"),
        ],
        capture_output=True,
        text=True,
    )
    assert ev.returncode == 2 and "does not exist" in ev.stderr and "Traceback" not in ev.stderr


def test_the_time_limit_guards_a_fixed_number_of_steps_and_says_so(tmp_path, shapes_dir):
    """max_steps is the run; max_time only stops a machine too slow for it, with a warning line
    and a release that records the steps trained of those planned."""
    config = tiny_vq_config(tmp_path, shapes_dir)
    res = _train(config, "--trainer.max_steps", "1000000", "--trainer.max_time", "00:00:00:03")
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout + res.stderr
    assert "warning: the time limit (trainer.max_time" in out and "of the 1,000,000 it was given" in out
    marker = read_marker(tmp_path / "vq")
    assert marker["stopped_by_time_limit"] is True and marker["planned_steps"] == 1_000_000
    assert 0 < marker["trained_steps"] < 1_000_000
