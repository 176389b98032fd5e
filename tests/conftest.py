"""Shared fixtures and helpers; tests marked `cuda` are skipped without a CUDA device."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter):
    """Count the bad-input catalogue (tests/test_bad_inputs.py): one test per fault."""
    results = {
        outcome: [r for r in terminalreporter.stats.get(outcome, []) if "test_bad_inputs.py" in r.nodeid]
        for outcome in ("passed", "failed", "error", "skipped")
    }
    tried = sum(len(r) for r in results.values())
    if tried:
        terminalreporter.write_line(
            f"bad-input catalogue: {tried} faults tried, {len(results['passed'])} handled as specified"
        )


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory) -> Path:
    """A small shapes dataset at 32 px: 3 train shards of 100, 1 val shard of 50."""
    from omni.shapes.render import build

    out = tmp_path_factory.mktemp("shapes")
    build(out, train=300, val=50, size=32, seed=0, per_shard=100, progress=False)
    return out


@pytest.fixture(scope="session")
def model_assets(shapes_dir, tmp_path_factory):
    """What model training reads: a BPE tokenizer.json, a (small, untrained) VQ folder and code
    shards of `shapes_dir` encoded with it (train-00000{0,1,2}.tar, val-000000.tar)."""
    from types import SimpleNamespace

    import webdataset as wds

    from omni.data.codes import record_encoded_shard
    from omni.tokenizers import VQConfig, VQModel, save_vq
    from omni.tokenizers.encode import encode_shard
    from omni.tokenizers.export import vq_fingerprint
    from omni.tokenizers.text import TextTokenizer, train_bpe

    out = tmp_path_factory.mktemp("model_assets")
    texts = []
    for shard in sorted(shapes_dir.glob("train-*.tar")):
        for sample in wds.WebDataset(str(shard), shardshuffle=False):
            texts.append(sample["txt"].decode())
            texts += [p["question"] + " " + p["answer"] for p in json.loads(sample["json"])["qa"]]
    TextTokenizer(train_bpe(texts, vocab_size=300)).save(out / "tokenizer.json")
    torch.manual_seed(0)
    vq = VQModel(VQConfig.from_name("shapes-32", channels=16, codebook_size=64)).eval()
    save_vq(vq, out / "vq")
    codes = out / "codes"
    codes.mkdir()
    fingerprint = vq_fingerprint(out / "vq")
    for shard in sorted(shapes_dir.glob("*.tar")):
        counts = encode_shard(vq, str(shard), codes / shard.name)
        record_encoded_shard(
            codes,
            shard.name,
            vq=out / "vq",
            fingerprint=fingerprint,
            grid=vq.config.grid,
            codebook_size=vq.config.codebook_size,
            source=str(shard),
            counts=counts,
        )
    return SimpleNamespace(root=out, tokenizer=out / "tokenizer.json", vq=out / "vq", codes=codes)


@pytest.fixture(scope="session")
def dialogue_assets(model_assets, tmp_path_factory):
    """Shapes dialogues (`omni shapes dialogues`: 24 train, 6 val) as image shards (`images`) and as
    code shards encoded with `model_assets`' VQ (`codes`), recorded like any code folder."""
    from types import SimpleNamespace

    from omni.data.codes import record_encoded_shard
    from omni.shapes.dialogues import build
    from omni.tokenizers.encode import encode_shard
    from omni.tokenizers.export import load_vq, vq_fingerprint

    out = tmp_path_factory.mktemp("dialogues")
    build(out / "images", train=24, val=6, per_shard=12)
    vq, codes = load_vq(model_assets.vq), out / "codes"
    codes.mkdir()
    for shard in sorted((out / "images").glob("*.tar")):
        counts = encode_shard(vq, str(shard), codes / shard.name)
        record_encoded_shard(
            codes, shard.name, vq=model_assets.vq, fingerprint=vq_fingerprint(model_assets.vq),
            grid=vq.config.grid, codebook_size=vq.config.codebook_size, source=str(shard), counts=counts,
        )  # fmt: skip
    return SimpleNamespace(images=out / "images", codes=codes)


# A small understanding encoder for tests (`understanding: encoder`).
TINY_ENCODER = dict(dim=32, depth=1, heads=2)


@pytest.fixture(scope="session")
def tiny_releases(model_assets, tmp_path_factory) -> dict[str, Path]:
    """Release folders of an untrained tiny model over `model_assets`, one per image mode,
    "encoder": an ar model that reads images with an understanding encoder, and "grounded": an ar
    model whose vocabulary has 16 location bins (omni.grounding)."""
    from omni.assets import Assets
    from omni.checkpoint import save_pretrained
    from omni.model import Architecture, Transformer
    from omni.understanding import EncoderConfig

    root = tmp_path_factory.mktemp("releases")
    plain = Assets.load(model_assets.tokenizer, model_assets.vq)
    grounded = Assets.load(model_assets.tokenizer, model_assets.vq, locations=16)
    folders = {}
    for mode in ("mask", "ar", "encoder", "grounded"):
        assets = grounded if mode == "grounded" else plain
        torch.manual_seed(0)
        image_fields = mode != "mask"  # the demo's image fields, taken from the VQ as training does
        reading = (
            dict(understanding="encoder", encoder=EncoderConfig(**TINY_ENCODER)) if mode == "encoder" else {}
        )
        architecture = Architecture.from_name(
            "tiny",
            image_generation="mask" if mode == "mask" else "ar",
            image_positions=image_fields,
            image_features=image_fields,
            **reading,
        )
        model = Transformer(assets.model_config(architecture))
        if image_fields:
            model.code_features.copy_(assets.code_appearance())
            torch.nn.init.normal_(model.code_readout.weight, std=0.02)  # zero at init: make it matter
        generation = {"mask_steps": 3, "max_new_tokens": 6}
        folders[mode] = root / mode
        save_pretrained(
            folders[mode],
            model.state_dict(),
            model.config,
            assets,
            generation,
        )
    return folders


def tiny_model(model_assets, **architecture):
    """An untrained tiny Transformer over `model_assets` and those assets (omni.assets.Assets)."""
    from omni.assets import Assets
    from omni.model import Architecture, Transformer

    assets = Assets.load(model_assets.tokenizer, model_assets.vq)
    return Transformer(assets.model_config(Architecture.from_name("tiny", **architecture))), assets


def tiny_train_command(assets, out: Path, *extra: str) -> list[str]:
    """`train.py fit` on the demo config shrunk to a tiny model over `model_assets`, writing under `out`.

    Checkpoints go to out/checkpoints, logs to out/logs, the release to out/model; `extra`
    flags come last and win. fp32 and eager, unlike the demo (precision auto, compiled blocks):
    exact comparisons stay exact, and no test pays a compilation it does not test.
    """
    import sys

    return [
        sys.executable,
        "train.py",
        "fit",
        "--config",
        "configs/shapes/model.yaml",
        f"--data.train_shards={assets.codes}/train-*.tar",
        f"--data.val_shards={assets.codes}/val-*.tar",
        f"--data.tokenizer={assets.tokenizer}",
        f"--data.vq={assets.vq}",
        "--data.seq_len=128",
        "--data.batch_size=4",
        "--data.val_batches=2",
        "--model.transformer.dim=64",
        "--model.transformer.n_heads=4",
        "--model.transformer.n_layers=2",
        "--model.transformer.max_seq_len=128",
        "--model.warmup_steps=5",
        f"--model.export_dir={out}/model",
        "--trainer.max_time=null",
        "--trainer.precision=32-true",
        "--model.compile=false",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={out}",
        f"--trainer.logger.init_args.save_dir={out}",
        f"--trainer.callbacks.init_args.dirpath={out}/checkpoints",
        *extra,
    ]


def checkpoint_callback(cfg: dict) -> dict:
    """The ModelCheckpoint entry of a config's trainer.callbacks."""
    (found,) = [c for c in cfg["trainer"]["callbacks"] if c["class_path"].endswith("ModelCheckpoint")]
    return found


def tiny_vq_config(tmp_path: Path, shapes_dir: Path, **data_overrides) -> str:
    """configs/shapes/vq.yaml shrunk to 100 steps of a 64-code VQ on `shapes_dir`, under tmp_path.

    Writes tmp_path/vq.yaml and returns its path; runs go to tmp_path/run, the release to tmp_path/vq.
    """
    import yaml

    cfg = yaml.safe_load((REPO / "configs/shapes/vq.yaml").read_text())
    run = tmp_path / "run"
    cfg["trainer"].update(
        max_time=None,
        max_steps=100,
        val_check_interval=50,
        limit_val_batches=1,
        default_root_dir=str(run),
        enable_progress_bar=False,
    )
    cfg["trainer"]["logger"]["init_args"]["save_dir"] = str(run)
    checkpoint_callback(cfg)["init_args"].update(dirpath=str(run / "checkpoints"), every_n_train_steps=50)
    cfg["model"]["vq"].update(channels=16, codebook_size=64, restart_every=10)
    cfg["model"].update(export_dir=str(tmp_path / "vq"), warmup_steps=5)
    cfg["data"].update(
        train_shards=str(shapes_dir / "train-*.tar"),
        val_shards=str(shapes_dir / "val-*.tar"),
        batch_size=16,
        batches_per_epoch=20,
        **data_overrides,
    )
    path = tmp_path / "vq.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


# Shared sample makers (the loader tests and the bad-input catalogue both use them).


def png_bytes(img: Image.Image, fmt="PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def write_shard(path, samples):
    with wds.TarWriter(str(path)) as sink:
        for s in samples:
            sink.write(s)


def good(i):
    from omni.shapes.render import make_sample

    _, text, qa, png, _ = make_sample(0, "train", i, 32)
    return {
        "__key__": f"good{i:04d}",
        "png": png,
        "txt": text.encode(),
        "json": json.dumps({"qa": qa}).encode(),
    }


def odd_images():
    rgba = Image.new("RGBA", (32, 32), (255, 0, 0, 0))
    rgba.paste((0, 255, 0, 255), (8, 8, 24, 24))
    grey16 = Image.fromarray((np.arange(64 * 48).reshape(48, 64) * 20).astype(np.uint16))
    palette = Image.new("RGB", (40, 40), (0, 0, 255)).convert("P", palette=Image.ADAPTIVE)
    return {
        "rgba": rgba,
        "grey": Image.new("L", (32, 32), 128),
        "grey16": grey16,
        "palette": palette,
        "cmyk": Image.new("CMYK", (32, 32), (0, 255, 255, 0)),
        "tiny": Image.new("RGB", (1, 1), (255, 255, 0)),
        "wide": Image.new("RGB", (10000, 10), (0, 255, 255)),
    }


def eager_to_draw(model, vocab, boi: float, eos: float):
    """Constant logit offsets on <boi> and <eos> for `model` (a forward hook; `.remove()` it), so
    that an untrained model opens images and stops at rates a test can see."""
    bias = torch.zeros(vocab.size, device=model.output.weight.device)
    bias[vocab.special("boi")], bias[vocab.special("eos")] = boi, eos
    return model.register_forward_hook(lambda module, args, out: out + bias)


# Hugging Face models the converters are held to (omni.convert; transformers is a dev extra).


def hf_tokenizer_file(shapes_dir, folder):
    """A plain byte-level BPE as an HF model ships it (its own <s>, </s>; none of Omni's tokens)."""
    import webdataset as wds
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    shard = str(shapes_dir / "train-000000.tar")
    texts = [s["txt"].decode() for s in wds.WebDataset(shard, shardshuffle=False)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=290, special_tokens=["<s>", "</s>"]))
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    return folder / "tokenizer.json"


def tiny_llama(folder, tokenizer, *, tied: bool, vocab_rows: int, **overrides):
    """A random LlamaForCausalLM (GQA, rope_theta 5e5) saved as an HF folder."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab_rows, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=tied, **overrides,
    )  # fmt: skip
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(folder, safe_serialization=True)
    (folder / "tokenizer.json").write_bytes(tokenizer.read_bytes())
    return model
