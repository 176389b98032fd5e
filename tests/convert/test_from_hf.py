"""omni.convert.from_hf: a tiny random Hugging Face Llama, built and saved here (no download),
becomes an Omni folder whose logits on text are the HF model's, before and after the vocabulary
is extended, and whose greedy decoding gives the same tokens; unsupported configs are refused."""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from conftest import hf_tokenizer_file, tiny_llama  # noqa: E402

import omni  # noqa: E402
from omni.convert import UnsupportedModelError, from_hf  # noqa: E402
from omni.generate import generate_text  # noqa: E402
from omni.grammar import Prompt  # noqa: E402


@pytest.fixture(scope="module")
def hf_tokenizer(tmp_path_factory, shapes_dir):
    return hf_tokenizer_file(shapes_dir, tmp_path_factory.mktemp("hf_tokenizer"))


@pytest.mark.parametrize("tied", [False, True])
def test_logits_and_greedy_tokens_equal_the_hf_models(tmp_path, hf_tokenizer, model_assets, tied):
    from tokenizers import Tokenizer

    text_size = Tokenizer.from_file(str(hf_tokenizer)).get_vocab_size(with_added_tokens=True)
    # Untied: as many rows as the tokenizer has ids; tied: padded beyond them, as many HF models are.
    rows = text_size if not tied else text_size + 10
    hf = tiny_llama(tmp_path / "hf", hf_tokenizer, tied=tied, vocab_rows=rows)
    from_hf(tmp_path / "hf", tmp_path / "omni", vq=model_assets.vq)
    pipe = omni.load_pretrained(tmp_path / "omni")
    vocab, model = pipe.vocab, pipe.model
    assert vocab.text_size == text_size and vocab.size == text_size + 11 + 64  # + specials + codes
    assert (model.config.n_kv_heads, model.config.rope_base) == (2, 500000.0)

    ids = torch.randint(0, text_size, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        theirs = hf(ids).logits
        ours = model(ids)
    assert torch.allclose(ours[..., :text_size], theirs[..., :text_size], atol=1e-5, rtol=1e-4)
    # The appended rows (specials, codes) are the mean of the text rows, in and out.
    assert torch.allclose(
        model.embedding.weight[text_size:], model.embedding.weight[:text_size].mean(0).expand(75, -1)
    )
    assert torch.allclose(model.output.weight[-1], model.output.weight[:text_size].mean(0))

    prompt = ids[0, :12].tolist()
    with torch.no_grad():
        want = hf.generate(
            torch.tensor([prompt]), max_new_tokens=10, do_sample=False, eos_token_id=None,
            pad_token_id=0, attention_mask=torch.ones(1, 12, dtype=torch.long),
            suppress_tokens=list(range(text_size, rows)) or None,  # padding rows no text id reaches
        )[0, 12:].tolist()  # fmt: skip
    got = generate_text(model, vocab, [Prompt(prompt)], max_new_tokens=10)[0]
    assert got == want


def test_unsupported_configs_are_refused_naming_the_field(tmp_path, hf_tokenizer, model_assets):
    cases = {
        "rope_scaling": dict(
            rope_scaling={"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 64}
        ),
        "attention_bias": dict(attention_bias=True),
        "hidden_act": dict(hidden_act="gelu"),
    }
    for field, overrides in cases.items():
        folder = tmp_path / field
        tiny_llama(folder, hf_tokenizer, tied=True, vocab_rows=200, **overrides)
        with pytest.raises(UnsupportedModelError, match=field):
            from_hf(folder, tmp_path / f"{field}-omni", vq=model_assets.vq)
        assert not (tmp_path / f"{field}-omni").exists()
    config = json.loads((tmp_path / "hidden_act" / "config.json").read_text())
    config.update(model_type="gpt2", architectures=["GPT2LMHeadModel"], hidden_act="silu")
    (tmp_path / "hidden_act" / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedModelError, match="model_type 'gpt2'"):
        from_hf(tmp_path / "hidden_act", tmp_path / "gpt2-omni", vq=model_assets.vq)
    small = tmp_path / "small"
    tiny_llama(small, hf_tokenizer, tied=True, vocab_rows=50)
    with pytest.raises(UnsupportedModelError, match="vocab_size is 50"):
        from_hf(small, tmp_path / "small-omni", vq=model_assets.vq)
    (small / "model.safetensors").unlink()
    (small / "pytorch_model.bin").write_bytes(b"a pickle")
    with pytest.raises(FileNotFoundError, match="pytorch_model.bin is a pickle, which Omni never loads"):
        from_hf(small, tmp_path / "small-omni", vq=model_assets.vq)


def test_the_command_converts_and_reports_errors_in_one_line(tmp_path, hf_tokenizer, model_assets, capsys):
    from omni.commands import main

    tiny_llama(tmp_path / "hf", hf_tokenizer, tied=True, vocab_rows=200)
    out = tmp_path / "omni"
    assert (
        main(
            [
                "convert",
                "from-hf",
                "--src",
                str(tmp_path / "hf"),
                "--vq",
                str(model_assets.vq),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert omni.load_pretrained(out).model.config.n_layers == 2
    assert (
        main(
            [
                "convert",
                "from-hf",
                "--src",
                str(tmp_path / "nothing"),
                "--vq",
                str(model_assets.vq),
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
    assert "nothing/config.json not found" in capsys.readouterr().err
