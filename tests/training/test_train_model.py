"""`omni train` (train.py): the configs parse and build their strategies; a tiny run trains, validates and releases."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, tiny_train_command

CONFIGS = sorted((REPO / "configs").glob("*/model*.yaml"))


def parse_config(path: Path, monkeypatch):
    """Parse a config with train.py's own CLI (links included) without instantiating anything."""
    monkeypatch.setattr(sys, "argv", ["train.py"])
    monkeypatch.setenv("JSONARGPARSE_DEPRECATION_WARNINGS", "off")
    from omni.commands.train import OmniCLI
    from omni.training.datamodule import OmniDataModule
    from omni.training.module import OmniLitModule

    class ParseOnly(OmniCLI):
        def instantiate_classes(self) -> None:
            pass

    return ParseOnly(OmniLitModule, OmniDataModule, run=False, args=["--config", str(path)]).config


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_configs_parse_and_build_their_strategies(path, monkeypatch):
    from jsonargparse import ArgumentParser
    from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy, SingleDeviceStrategy, Strategy

    from omni.model import Architecture, Block, ModelConfig, Transformer

    config = parse_config(path, monkeypatch)
    architecture = Architecture(**vars(config.model.transformer))
    # What omni.assets fills in from a 32k-id vocabulary and a 256-code VQ of 8x8 4 px patches.
    resolved = {"vocab_size": 32768, "image_positions": 64 * architecture.image_positions}
    on = architecture.image_features
    resolved |= {"image_features": 48 * on, "image_codes": 256 * on}
    model_config = ModelConfig(**vars(architecture) | resolved)
    with torch.device("meta"):
        params = Transformer(model_config).num_params(embedding=True)
    strategy = config.trainer.strategy
    if isinstance(strategy, str):  # "auto" on the CPU demo
        assert path.parent.name == "shapes" and strategy == "auto" and params < 3e7
        return
    parser = ArgumentParser()
    parser.add_argument("--strategy", type=Strategy)
    built = parser.instantiate(parser.parse_object({"strategy": strategy})).strategy
    assert not isinstance(built, SingleDeviceStrategy)
    assert config.trainer.precision == "bf16-mixed"
    if isinstance(built, FSDPStrategy):
        policy = built.kwargs["auto_wrap_policy"]
        assert policy._module_classes == {Block}  # one FSDP unit per Transformer block
        assert built._activation_checkpointing_kwargs["auto_wrap_policy"]._module_classes == {Block}
        assert 0.8e9 < params < 1.3e9
    else:
        assert isinstance(built, DDPStrategy) and config.model.compile
        assert 0.9e8 < params < 1.6e8


@pytest.mark.slow
def test_a_tiny_run_trains_validates_and_releases(model_assets, tmp_path):
    out = tmp_path / "run"
    cmd = tiny_train_command(
        model_assets,
        out,
        "--model.ema_decay=0.9",
        "--trainer.max_steps=40",
        "--trainer.val_check_interval=20",
        "--trainer.log_every_n_steps=5",
        "--trainer.callbacks.init_args.every_n_train_steps=20",
        "--progress.every_seconds=0.5",
    )
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (out / "checkpoints" / "last.ckpt").is_file()
    # Without a progress bar the run says how it goes: step/budget, minutes, loss, task accuracies.
    lines = [line for line in res.stdout.splitlines() if line.startswith("[train")]
    assert len(lines) >= 3 and re.match(r"\[train\] step 1/40 \| \d+\.\d min \| loss \d", lines[0]), lines
    # (The closing line has no figures when a regular line was printed at the last step.) A
    # step's accuracies are of the tasks its batch holds, so a line may lack one; which steps get
    # a line depends on the machine's speed.
    assert all("_acc" in line and "steps/s" in line for line in lines[1:-1]), lines
    assert any("t2i_acc" in line for line in lines) and any("caption_acc" in line for line in lines), lines
    assert lines[-1].startswith("[train done] step 40/40")
    rows = list(csv.DictReader(open(next(out.glob("logs/version_*/metrics.csv")))))
    val = [r for r in rows if r.get("val/t2i_acc")]
    assert len(val) == 2 and all(r["val/caption_acc"] and r["val/vqa_acc"] and r["val/lm_acc"] for r in val)
    assert all(r["val_live/t2i_acc"] and r["val_live/loss"] for r in val)  # EMA: both weights scored
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert losses[-1] < losses[0]

    import omni

    pipe = omni.load_pretrained(out / "model")
    assert pipe.model.config.dim == 64 and pipe.generation["image_generation"] == "ar"
    assert pipe.generation["temperature"] == 0.2
    # The demo config's image fields were taken from the VQ (32 px, 4 px patches, 64 codes).
    config = pipe.model.config
    assert (config.image_positions, config.image_features, config.image_codes) == (64, 48, 64)
    assert pipe.model.code_features.abs().sum() > 0  # the appearance table came with the weights
    import json

    meta = json.loads((out / "model" / "config.json").read_text())
    assert meta["trained_steps"] == 40


def test_validation_scores_the_released_weights_and_the_live_ones_apart(model_assets, monkeypatch):
    """With EMA the release holds the average: val/* must score it, val_live/* the live weights."""
    from omni.assets import Assets
    from omni.data.packing import TaskBuilder, task_loader
    from omni.model import Architecture, Transformer
    from omni.training.module import OmniLitModule

    assets = Assets.load(model_assets.tokenizer, model_assets.vq)
    tok, vocab = assets.tokenizer, assets.vocab
    torch.manual_seed(0)
    lit = OmniLitModule(Architecture.from_name("tiny", max_seq_len=128), assets=assets, ema_decay=0.9)
    with torch.no_grad():
        for p in lit.ema.parameters():
            p.add_(0.05 * torch.randn_like(p))  # an average that differs from the live weights
    loader = task_loader(
        str(model_assets.codes / "val-*.tar"),
        TaskBuilder(vocab, tok, "mask", 0.0),
        ratios={"t2i": 1, "caption": 1, "vqa": 1, "lm": 1},
        seq_len=128,
        batch_size=2,
        batches_per_epoch=1,
        resampled=False,
        shuffle_buffer=0,
        every_task=True,
    )
    batch = next(iter(loader))
    logged = {}
    monkeypatch.setattr(lit, "log", lambda name, value, **kw: logged.__setitem__(name, float(value)))
    monkeypatch.setattr(lit, "_fsdp", lambda: False)  # no trainer attached
    with torch.no_grad():
        lit.validation_step(batch, 0)
        released = Transformer(lit.config)
        released.load_state_dict(lit._full_state_dict())  # what the export writes
        expected = {
            "val/loss": float(lit._step(batch, "check", released.eval())),
            "val_live/loss": float(lit._step(batch, "check")),
        }
    assert logged["val/loss"] == pytest.approx(expected["val/loss"], rel=1e-5)
    assert logged["val_live/loss"] == pytest.approx(expected["val_live/loss"], rel=1e-5)
    assert abs(expected["val/loss"] - expected["val_live/loss"]) > 1e-3
    assert {"val/t2i_acc", "val_live/t2i_acc", "val/caption_acc", "val_live/caption_acc"} <= set(logged)


@pytest.mark.parametrize(
    "script, flag, prefix",
    [("train.py", "--help", "model.transformer"), ("tokenizers/train_vq.py", "--model.vq.help", "model.vq")],
)
def test_fit_help_documents_every_config_field(script, flag, prefix):
    """`fit --help` shows each dataclass field's docstring (jsonargparse reads them only when asked)."""
    import dataclasses
    import os

    from omni.model import Architecture
    from omni.tokenizers.vqgan import VQConfig

    config = Architecture if script == "train.py" else VQConfig
    env = {**os.environ, "COLUMNS": "200"}
    res = subprocess.run(
        [sys.executable, script, "fit", flag], cwd=REPO, capture_output=True, text=True, env=env
    )
    assert res.returncode == 0, res.stderr[-2000:]
    text = " ".join(res.stdout.split())
    helps = dict(re.findall(rf"--{re.escape(prefix)}\.(\w+) \S+ (.*?)\(type:", text))
    names = [f.name for f in dataclasses.fields(config)]
    assert set(names) <= set(helps), sorted(set(names) - set(helps))
    undocumented = [name for name in names if len(helps[name].strip()) < 10]
    assert not undocumented, f"fields without help text: {undocumented}"
    if config is Architecture:
        assert helps["dim"].startswith("Width of the residual stream.")


@pytest.mark.slow
def test_an_encoder_run_starts_from_pretrained_weights_and_freezes_them(model_assets, tmp_path):
    """understanding: encoder end to end: pixels from the code shards, the ViT started from a
    timm file and frozen (LLaVA stage 2), the connector and the Transformer trained, the release
    captioning through its encoder."""
    from conftest import TINY_ENCODER
    from safetensors.torch import load_file, save_file
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(3)
    vit = VisionTransformer(
        img_size=32, patch_size=4, embed_dim=TINY_ENCODER["dim"], depth=TINY_ENCODER["depth"],
        num_heads=TINY_ENCODER["heads"], num_classes=0, global_pool="", class_token=False,
    )  # fmt: skip
    save_file(vit.state_dict(), str(tmp_path / "vit.safetensors"))
    out = tmp_path / "run"
    encoder = [f"--model.transformer.encoder.{k}={v}" for k, v in TINY_ENCODER.items()]
    cmd = tiny_train_command(
        model_assets,
        out,
        "--model.transformer.understanding=encoder",
        *encoder,
        f"--model.encoder_weights={tmp_path / 'vit.safetensors'}",
        "--model.freeze=[encoder]",
        "--trainer.max_steps=30",
        "--trainer.val_check_interval=30",
        "--trainer.log_every_n_steps=5",
    )
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = list(csv.DictReader(open(next(out.glob("logs/version_*/metrics.csv")))))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert losses[-1] < losses[0]
    assert [r for r in rows if r.get("val/caption_acc")]
    released = load_file(str(out / "model" / "model.safetensors"))
    for name, tensor in vit.state_dict().items():  # frozen: exactly the file's weights
        assert torch.equal(released[f"understanding.vit.{name}"], tensor), name

    import omni

    pipe = omni.load_pretrained(out / "model")
    assert pipe.model.understanding is not None
    assert isinstance(pipe.caption(torch.zeros(3, 32, 32))[0], str)


@pytest.mark.slow
def test_llava_stages_train_the_connector_first_then_resume_with_the_transformer(model_assets, tmp_path):
    """Stage 1 (`freeze: [encoder, transformer]`) changes only the connector; stage 2 resumes its
    checkpoint with the Transformer unfrozen, and the optimiser state restores."""
    from conftest import TINY_ENCODER
    from safetensors.torch import load_file

    out = tmp_path / "run"
    encoder = [f"--model.transformer.encoder.{k}={v}" for k, v in TINY_ENCODER.items()]
    common = ["--model.transformer.understanding=encoder", *encoder, "--model.ema_decay=0"]
    initial = tmp_path / "initial"
    res = subprocess.run(
        tiny_train_command(model_assets, initial, *common, "--trainer.max_steps=1", "--model.lr=1e-12"),
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    start = load_file(
        str(initial / "model" / "model.safetensors")
    )  # the seed's weights, one negligible step on

    def stage(steps: int, freeze: str, *extra: str) -> dict:
        cmd = tiny_train_command(
            model_assets, out, *common, f"--trainer.max_steps={steps}", f"--model.freeze={freeze}", *extra
        )
        res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
        return load_file(str(out / "model" / "model.safetensors"))

    def moved(a: dict, b: dict, prefix: str) -> bool:
        return any(not torch.allclose(a[k], b[k], atol=1e-6) for k in a if k.startswith(prefix))

    one = stage(10, "[encoder, transformer]", "--trainer.callbacks.init_args.every_n_train_steps=10")
    assert moved(start, one, "understanding.connector.")
    assert not moved(start, one, "understanding.vit.") and not moved(start, one, "blocks.")
    two = stage(20, "[encoder]", "--ckpt_path=last")
    assert moved(one, two, "blocks.") and moved(one, two, "understanding.connector.")
    assert not moved(one, two, "understanding.vit.")
    assert json.loads((out / "model" / "config.json").read_text())["trained_steps"] == 20


@pytest.mark.slow
def test_a_fixed_number_of_steps_trains_the_same_weights_twice(model_assets, tmp_path):
    """The demo's figures hold still because a run of N steps is deterministic: same seed, same
    bytes; another seed (initialisation and data order) other weights."""

    def weights(out: str, *seed: str) -> bytes:
        cmd = tiny_train_command(
            model_assets, tmp_path / out, "--trainer.max_steps=8", "--model.ema_decay=0", *seed
        )
        res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        assert res.returncode == 0, res.stderr[-3000:]
        marker = json.loads((tmp_path / out / "model/.omni-release.json").read_text())
        assert (marker["trained_steps"], marker["planned_steps"], marker["stopped_by_time_limit"]) == (
            8,
            8,
            False,
        )
        return (tmp_path / out / "model/model.safetensors").read_bytes()

    first = weights("a")
    assert weights("b") == first
    assert weights("c", "--seed_everything=1", "--data.seed=1") != first
