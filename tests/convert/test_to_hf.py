"""omni.convert.to_hf: an Omni ar model that a causal Llama can express loads in transformers with
the same logits; its tokenizer holds Omni's specials and codes at Omni's ids; anything else is
refused with the reason."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

import omni  # noqa: E402
from omni.convert import UnsupportedModelError, to_hf  # noqa: E402


@pytest.fixture(scope="module")
def plain_release(model_assets, tmp_path_factory):
    """An untrained tiny ar model with nothing a Llama lacks (no image tables), as a release."""
    from conftest import tiny_model

    from omni.checkpoint import save_pretrained

    torch.manual_seed(0)
    model, assets = tiny_model(model_assets, image_generation="ar")
    folder = tmp_path_factory.mktemp("plain") / "model"
    save_pretrained(folder, model.state_dict(), model.config, assets, {"image_generation": "ar"})
    return folder


def test_an_exported_model_gives_omnis_logits_and_ids(plain_release, tmp_path):
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    pipe = omni.load_pretrained(plain_release)
    to_hf(plain_release, tmp_path / "hf")
    hf = LlamaForCausalLM.from_pretrained(tmp_path / "hf").eval()
    vocab = pipe.vocab
    # A causal sequence over every kind of id: text, specials, codes.
    ids = torch.randint(0, vocab.size, (2, 50), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(hf(ids).logits, pipe.model(ids), atol=1e-5, rtol=1e-4)
    tok = PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "hf" / "tokenizer.json"))
    assert len(tok) == vocab.size
    assert tok.convert_ids_to_tokens(vocab.special("boi")) == "<|boi|>"
    assert tok.convert_ids_to_tokens(vocab.image_offset + 5) == "<|image_5|>"
    assert tok.encode("a red circle", add_special_tokens=False) == pipe.tokenizer.encode("a red circle")
    assert (tmp_path / "hf" / "vq" / "model.safetensors").is_file()  # generated codes decode with it


def test_models_a_causal_llama_cannot_express_are_refused(tiny_releases, tmp_path):
    with pytest.raises(UnsupportedModelError, match="image_generation = 'mask'.*bidirectional image block"):
        to_hf(tiny_releases["mask"], tmp_path / "mask")
    with pytest.raises(UnsupportedModelError, match="image_positions = 64.*no learned image-position table"):
        to_hf(tiny_releases["ar"], tmp_path / "ar")
    assert not (tmp_path / "mask").exists() and not (tmp_path / "ar").exists()


def test_the_command_exports_and_refuses_in_one_line(plain_release, tiny_releases, tmp_path, capsys):
    from omni.commands import main

    assert main(["convert", "to-hf", "--src", str(plain_release), "--out", str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf" / "config.json").is_file()
    assert main(["convert", "to-hf", "--src", str(tiny_releases["mask"]), "--out", str(tmp_path / "m")]) == 2
    assert "error:" in capsys.readouterr().err and not (tmp_path / "m").exists()
