"""Every config in configs/ starts: its trainer (logger, callbacks, strategy, precision), model and
data are built and train 2 steps, with the model shrunk and the data pointed at tiny shapes shards.

On a CPU each config runs with accelerator cpu and 1 device; a config whose strategy needs a GPU
(FSDP) runs with DDP there, and as written in the cuda-marked test. Outputs go where the config
says, relative to a temporary working directory.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import yaml
from conftest import REPO, checkpoint_callback

CONFIGS = sorted(p for p in (REPO / "configs").glob("*/*.yaml"))
# Overlays start over another config of their folder (`--config BASE --config OVERLAY`).
OVERLAYS = {"grounding.yaml": "model.yaml"}


def _merged(base: dict, over: dict) -> dict:
    """What LightningCLI makes of two --config files: mappings merge, anything else is replaced."""
    out = dict(base)
    for key, value in over.items():
        out[key] = (
            _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


def _config(path):
    cfg = yaml.safe_load(path.read_text())
    base = OVERLAYS.get(path.name)
    return _merged(yaml.safe_load((path.parent / base).read_text()), cfg) if base else cfg


def _model_overrides(cfg: dict, assets, releases=None) -> list[str]:
    """The model shrunk to 2 layers of 64 and the data to the test's code shards; a config that
    starts from a release (sft.yaml) starts from the tiny ar release, at its sizes."""
    kv = ["--model.transformer.n_kv_heads=1"] if cfg["model"]["transformer"].get("n_kv_heads") else []
    if cfg["model"].get("init_from"):
        kv = [f"--model.init_from={releases['ar']}", "--model.transformer.n_kv_heads=2"]
    heads = 4 if cfg["model"].get("init_from") else 2
    return [
        f"--data.train_shards={assets.codes}/train-*.tar",
        f"--data.val_shards={assets.codes}/val-*.tar",
        f"--data.tokenizer={assets.tokenizer}",
        f"--data.vq={assets.vq}",
        "--data.seq_len=128",
        "--data.batch_size=2",
        "--data.num_workers=0",
        "--data.val_batches=1",
        "--model.transformer.dim=64",
        "--model.transformer.n_layers=2",
        f"--model.transformer.n_heads={heads}",
        *kv,
        "--model.transformer.max_seq_len=128",
        "--model.warmup_steps=1",
    ]


def _vq_overrides(shapes_dir) -> list[str]:
    return [
        f"--data.train_shards={shapes_dir}/train-*.tar",
        f"--data.val_shards={shapes_dir}/val-*.tar",
        "--data.batch_size=8",
        "--model.vq.channels=16",
        "--model.vq.codebook_size=64",
    ]


def _start(
    path, accelerator: str, tmp_path, model_assets, shapes_dir, releases=None
) -> tuple[dict, subprocess.CompletedProcess]:
    cfg = _config(path)
    is_vq = "vq" in cfg["model"]
    script = "tokenizers/train_vq.py" if is_vq else "train.py"
    overrides = _vq_overrides(shapes_dir) if is_vq else _model_overrides(cfg, model_assets, releases)
    strategy = cfg["trainer"].get("strategy")
    if accelerator == "cpu" and isinstance(strategy, dict) and "FSDP" in strategy["class_path"]:
        overrides.append("--trainer.strategy=ddp")  # Lightning's FSDP needs a GPU
    cmd = [
        sys.executable,
        str(REPO / script),
        "fit",
        *(["--config", str(path.parent / OVERLAYS[path.name])] if path.name in OVERLAYS else []),
        "--config",
        str(path),
        f"--trainer.accelerator={accelerator}",
        "--trainer.devices=1",
        "--trainer.max_time=null",
        "--trainer.max_steps=2",
        "--trainer.limit_val_batches=1",
        "--trainer.enable_progress_bar=false",
        *overrides,
    ]
    res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    return cfg, res


def _check_outputs(cfg: dict, res, tmp_path) -> None:
    assert res.returncode == 0, res.stderr[-4000:]
    trainer = cfg["trainer"]
    logger = trainer["logger"]
    logs = tmp_path / logger["init_args"]["save_dir"]
    if logger["class_path"].endswith("TensorBoardLogger"):
        assert list(logs.rglob("events.out.tfevents.*")), f"no TensorBoard events under {logs}"
    else:
        assert list(logs.rglob("hparams.yaml")), f"no CSV logger folder under {logs}"
    checkpoints = tmp_path / checkpoint_callback(cfg)["init_args"]["dirpath"]
    assert (checkpoints / "last.ckpt").exists()
    release = tmp_path / cfg["model"]["export_dir"]
    assert (release / "config.json").is_file() and (release / "model.safetensors").is_file()
    assert "[train done] step 2" in res.stdout


@pytest.mark.slow
@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_config_starts_on_a_cpu(path, tmp_path, model_assets, shapes_dir, tiny_releases):
    cfg, res = _start(path, "cpu", tmp_path, model_assets, shapes_dir, tiny_releases)
    _check_outputs(cfg, res, tmp_path)
    if cfg["trainer"].get("precision", "auto") == "auto":  # the demo's: measured, and the choice said
        (line,) = [line for line in res.stdout.splitlines() if line.startswith("precision auto -> ")]
        assert line.split()[3].rstrip(":") in ("bf16-mixed", "32-true"), line
    if "transformer" in cfg["model"]:
        import omni

        pipe = omni.load_pretrained(tmp_path / cfg["model"]["export_dir"])
        assert (
            pipe.model.config.dim == 64
            and pipe.model.config.image_generation == (cfg["model"]["transformer"]["image_generation"])
        )


@pytest.mark.cuda
@pytest.mark.parametrize(
    "path", [p for p in CONFIGS if p.parent.name == "base"], ids=lambda p: f"{p.parent.name}/{p.name}"
)
def test_every_gpu_config_starts_as_written_on_a_gpu(path, tmp_path, model_assets, shapes_dir):
    """The GPU configs with their own strategy (DDP / FSDP), precision and compile, on one GPU."""
    assert torch.cuda.is_available()
    cfg, res = _start(path, "gpu", tmp_path, model_assets, shapes_dir)
    _check_outputs(cfg, res, tmp_path)
