"""Hugging Face Llama-family checkpoints -> Omni model folders (`from_hf`), and back (`to_hf`).

A Llama, Mistral or SmolLM/TinyLlama-style folder (`config.json`, `model.safetensors` or its
sharded index, `tokenizer.json`) becomes an Omni release folder over a VQ of the user's: the
weights mapped to Omni's layout (q, k, v fused into `wqkv`, gate and up into `w13`), the HF
tokenizer kept as the text tokenizer, Omni's special tokens and the VQ's codes appended to the
vocabulary, each new embedding and output row the mean of the existing rows (so a new id starts
as an average token rather than noise). Rotary positions need no permutation: HF's Llama and
Omni both rotate the two halves of each head (`rotate_half`, `omni.model.apply_rotary`); the test
holds Omni's logits to the HF model's. Anything Omni's Transformer cannot express is refused,
naming the field: rope scaling, attention or MLP biases, another activation, sliding windows,
other architectures. Only safetensors are read (a `pytorch_model.bin` is refused, never unpickled).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from omni.assets import Assets
from omni.checkpoint import save_pretrained
from omni.generate import GENERATION_DEFAULTS
from omni.model import Architecture
from omni.vocab import rows_by_token

ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM")
MODEL_TYPES = ("llama", "mistral")


class UnsupportedModelError(ValueError):
    """A Hugging Face checkpoint that Omni's Transformer cannot express (the message names the field)."""


def read_hf_config(src: Path) -> dict:
    path = src / "config.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: give a Hugging Face model folder (config.json, weights, tokenizer.json)"
        )
    try:
        config = json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from e
    check_hf_config(config, path)
    return config


def check_hf_config(config: dict, where: Path | str) -> None:
    """UnsupportedModelError naming the first field Omni's Transformer cannot express."""
    kind = config.get("model_type")
    architectures = config.get("architectures") or []
    if kind not in MODEL_TYPES or (architectures and not set(architectures) & set(ARCHITECTURES)):
        raise UnsupportedModelError(
            f"{where}: model_type {kind!r} / architectures {architectures}: Omni converts Llama-family "
            f"decoders ({', '.join(ARCHITECTURES)})"
        )
    rules = [
        ("hidden_act", config.get("hidden_act", "silu") == "silu", "Omni's feed-forward is SwiGLU (silu)"),
        ("rope_scaling", not config.get("rope_scaling"), "Omni's rotary positions have no scaling"),
        (
            "rope_parameters",
            (config.get("rope_parameters") or {}).get("rope_type", "default") == "default",
            "Omni's rotary positions have no scaling (rope_type default only)",
        ),
        ("attention_bias", not config.get("attention_bias", False), "Omni's attention has no biases"),
        ("mlp_bias", not config.get("mlp_bias", False), "Omni's feed-forward has no biases"),
        (
            "head_dim",
            config.get("head_dim") in (None, config["hidden_size"] // config["num_attention_heads"]),
            "Omni's head size is hidden_size / num_attention_heads",
        ),
        (
            "sliding_window",
            not config.get("sliding_window")
            or config["sliding_window"] >= config.get("max_position_embeddings", 0),
            "Omni's attention has no sliding window",
        ),
    ]
    for field, ok, why in rules:
        if not ok:
            raise UnsupportedModelError(f"{where}: {field} = {config.get(field)!r} is not supported: {why}")


def read_hf_weights(src: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a folder's model.safetensors or its sharded index (no pickles)."""
    index = src / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (src / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        pickled = [p.name for p in src.glob("*.bin")] + [p.name for p in src.glob("*.pt")]
        raise FileNotFoundError(
            f"{src} has no model.safetensors (or its index)"
            + (f"; {pickled[0]} is a pickle, which Omni never loads: save the model with safetensors "
               f"(model.save_pretrained(..., safe_serialization=True))" if pickled else "")
        )  # fmt: skip
    state = {}
    for name in files:
        path = src / name
        if Path(name).name != name:
            raise ValueError(f"{index}: {name!r} is not a file of the folder")
        try:
            with safe_open(str(path), framework="pt") as f:
                for key in f.keys():
                    state[key] = f.get_tensor(key)
        except (SafetensorError, OSError) as e:
            raise ValueError(f"{path} cannot be read as safetensors ({e})") from e
    return state


def rope_theta(config: dict) -> float:
    """The rotary base: `rope_theta` (transformers < 5) or `rope_parameters.rope_theta` (5 and later)."""
    return (config.get("rope_parameters") or {}).get("rope_theta") or config.get("rope_theta", 10000.0)


def architecture_of(config: dict, image_generation: str = "ar") -> Architecture:
    """Omni's architecture for a Llama-family config."""
    return Architecture(
        dim=config["hidden_size"],
        n_layers=config["num_hidden_layers"],
        n_heads=config["num_attention_heads"],
        n_kv_heads=config.get("num_key_value_heads") or config["num_attention_heads"],
        hidden_dim=config["intermediate_size"],
        max_seq_len=config.get("max_position_embeddings", 2048),
        rope_base=float(rope_theta(config)),
        norm_eps=float(config.get("rms_norm_eps", 1e-6)),
        image_generation=image_generation,
    )


def from_hf(src: str | Path, dst: str | Path, vq: str | Path, image_generation: str = "ar") -> Path:
    """Convert a Hugging Face Llama-family folder `src` into an Omni model folder `dst` over the
    VQ folder `vq` (fp32 weights); returns `dst`. `image_generation`: the folder's mode (ar or mask)."""
    src, dst = Path(src), Path(dst)
    config = read_hf_config(src)
    tokenizer = src / "tokenizer.json"
    if not tokenizer.is_file():
        raise FileNotFoundError(f"{tokenizer} not found: the converted model keeps the HF tokenizer")
    assets = Assets.load(tokenizer, vq)
    vocab = assets.vocab
    model_config = assets.model_config(architecture_of(config, image_generation))
    weights = read_hf_weights(src)

    def hf(key: str) -> torch.Tensor:
        if key not in weights:
            raise UnsupportedModelError(
                f"{src}: no tensor {key!r} in its weights (a Llama-family checkpoint names it so); "
                f"it has e.g. {sorted(weights)[:4]}"
            )
        return weights[key]

    rows = config["vocab_size"]
    if vocab.text_size > rows:
        raise UnsupportedModelError(
            f"{tokenizer} has {vocab.text_size} ids but {src / 'config.json'} vocab_size is {rows}"
        )
    prefix = "model."
    embed = hf(f"{prefix}embed_tokens.weight")
    tied = config.get("tie_word_embeddings", False) or "lm_head.weight" not in weights
    head = embed if tied else hf("lm_head.weight")
    text_rows = list(range(vocab.text_size)) + [None] * (vocab.size - vocab.text_size)
    state = {
        # The HF rows are the text ids (padding rows past them dropped); Omni's specials and the VQ's
        # codes start as their mean.
        "embedding.weight": rows_by_token(embed.float(), text_rows),
        "output.weight": rows_by_token(head.float(), text_rows),
        "norm.weight": hf(f"{prefix}norm.weight"),
    }
    for i in range(config["num_hidden_layers"]):
        layer = f"{prefix}layers.{i}."
        attn, mlp = layer + "self_attn.", layer + "mlp."
        state[f"blocks.{i}.attention_norm.weight"] = hf(layer + "input_layernorm.weight")
        state[f"blocks.{i}.ffn_norm.weight"] = hf(layer + "post_attention_layernorm.weight")
        state[f"blocks.{i}.attention.wqkv.weight"] = torch.cat(
            [hf(attn + f"{p}_proj.weight") for p in ("q", "k", "v")]
        )
        state[f"blocks.{i}.attention.wo.weight"] = hf(attn + "o_proj.weight")
        state[f"blocks.{i}.ffn.w13.weight"] = torch.cat(
            [hf(mlp + "gate_proj.weight"), hf(mlp + "up_proj.weight")]
        )
        state[f"blocks.{i}.ffn.w2.weight"] = hf(mlp + "down_proj.weight")
    state = {k: v.float().contiguous() for k, v in state.items()}
    generation = {"image_generation": image_generation} | GENERATION_DEFAULTS
    return save_pretrained(dst, state, model_config, assets, generation, extra={"trained_steps": 0})


# What a causal LlamaForCausalLM cannot compute of an Omni model, and why.
NOT_EXPRESSIBLE = {
    "image_generation": (
        "mask",
        "mask-mode generation fills a bidirectional image block, which a causal model cannot",
    ),
    "image_positions": (True, "LlamaForCausalLM has no learned image-position table"),
    "image_features": (True, "LlamaForCausalLM has no code-appearance table"),
    "grid_rotary": (True, "LlamaForCausalLM's rotary positions are 1-D"),
    "qk_norm": (True, "LlamaForCausalLM has no QK-norm"),
    "understanding": ("encoder", "LlamaForCausalLM has no understanding encoder"),
}


def to_hf(src: str | Path, dst: str | Path) -> Path:
    """Export an Omni model folder `src` as a Hugging Face `LlamaForCausalLM` folder `dst` (config.json,
    model.safetensors, tokenizer.json with Omni's special tokens and one `<|image_N|>` token per
    VQ code, and `vq/` to decode generated codes with `omni.tokenizers.load_vq`); returns `dst`.

    For serving text and raster (ar) image generation: a causal HF model reads every image causally,
    so Omni's bidirectional reading of images (captions, VQA) is not what it computes. Models with
    parts a causal Llama cannot express are refused with the reason (`NOT_EXPRESSIBLE`).
    """
    from safetensors.torch import save_file
    from tokenizers import AddedToken, Tokenizer

    from omni.checkpoint import check_release_parts, load_state, read_config
    from omni.release import writing_folder

    src, dst = Path(src), Path(dst)
    meta = read_config(src)
    check_release_parts(src, meta)
    config, vocab = meta["model"], meta["vocab"]
    for field, (bad, why) in NOT_EXPRESSIBLE.items():
        value = getattr(config, field)
        if value == bad or (bad is True and value):
            raise UnsupportedModelError(f"{src}: model.{field} = {value!r} cannot be exported: {why}")
    state = load_state(src)
    q, kv = config.n_heads * config.head_dim, config.kv_heads * config.head_dim
    hf = {
        "model.embed_tokens.weight": state["embedding.weight"],
        "lm_head.weight": state["output.weight"],
        "model.norm.weight": state["norm.weight"],
    }
    for i in range(config.n_layers):
        layer, block = f"model.layers.{i}.", f"blocks.{i}."
        wq, wk, wv = state[block + "attention.wqkv.weight"].split([q, kv, kv])
        gate, up = state[block + "ffn.w13.weight"].chunk(2)
        hf |= {
            layer + "input_layernorm.weight": state[block + "attention_norm.weight"],
            layer + "post_attention_layernorm.weight": state[block + "ffn_norm.weight"],
            layer + "self_attn.q_proj.weight": wq,
            layer + "self_attn.k_proj.weight": wk,
            layer + "self_attn.v_proj.weight": wv,
            layer + "self_attn.o_proj.weight": state[block + "attention.wo.weight"],
            layer + "mlp.gate_proj.weight": gate,
            layer + "mlp.up_proj.weight": up,
            layer + "mlp.down_proj.weight": state[block + "ffn.w2.weight"],
        }
    hf_config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab.size,
        "hidden_size": config.dim,
        "intermediate_size": config.ffn_dim,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.kv_heads,
        "head_dim": config.head_dim,
        "max_position_embeddings": config.max_seq_len,
        "rope_theta": config.rope_base,  # transformers < 5
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_base},  # 5 and later
        "rms_norm_eps": config.norm_eps,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "bos_token_id": vocab.special("bos"),
        "eos_token_id": vocab.special("eos"),
        "pad_token_id": vocab.special("pad"),
        "torch_dtype": "float32",
    }
    # The text tokenizer, then every id Omni added after it: its special tokens, then the codes.
    tokenizer = Tokenizer.from_file(str(src / "tokenizer.json"))
    added = sorted((i, n) for n, i in vocab.special_ids.items() if i >= vocab.text_size)
    from omni.vocab import SPECIALS

    tokens = [SPECIALS[n] for _, n in added] + [f"<|image_{c}|>" for c in range(vocab.codebook_size)]
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in tokens])
    if (
        tokenizer.get_vocab_size(with_added_tokens=True) != vocab.size
        or tokenizer.token_to_id(f"<|image_{vocab.codebook_size - 1}|>") != vocab.size - 1
    ):
        raise ValueError(f"{src}: the tokenizer's ids cannot be laid out as the model's vocabulary")
    with writing_folder(dst, "hf-export", what="HF export folder") as tmp:
        save_file({k: v.float().contiguous() for k, v in hf.items()}, str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
        tokenizer.save(str(tmp / "tokenizer.json"))
        shutil.copytree(src / "vq", tmp / "vq")
    return dst
