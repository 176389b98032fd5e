"""omni.assets: a tokenizer and a VQ resolved once into a model's config, and checked against it."""

from __future__ import annotations

import pytest
import torch

from omni.assets import Assets
from omni.model import Architecture
from omni.tokenizers import load_vq


@pytest.fixture(scope="module")
def assets(model_assets) -> Assets:
    return Assets.load(model_assets.tokenizer, model_assets.vq)


def test_the_vq_and_tokenizer_complete_an_architecture(assets):
    f, side = assets.vq_config.downsample, assets.vq_config.grid
    assert (assets.image_tokens, assets.patch_features) == (side * side, 3 * f * f)
    chosen = Architecture.from_name("tiny", image_positions=True, image_features=True)
    config = assets.model_config(chosen)
    assert config.vocab_size == assets.vocab.size and config.dim == chosen.dim
    assert (config.image_positions, config.image_features, config.image_codes) == (side * side, 3 * f * f, 64)
    plain = assets.model_config(Architecture.from_name("tiny"))
    assert (plain.image_positions, plain.image_features, plain.image_codes) == (0, 0, 0)
    assets.check(config, assets.vocab)  # a config made from the assets fits them


def test_the_code_appearance_table_is_each_codes_decoded_patch(assets, model_assets):
    vq = load_vq(model_assets.vq)
    table, f = assets.code_appearance(), assets.vq_config.downsample
    assert table.shape == (64, 3 * f * f) and table.abs().max() <= 1
    # Row c is the centre patch of code c decoded as a 3x3 tile, flattened channel-first.
    c = 5
    image = vq.decode(torch.full((1, 3, 3), c))[0].clamp(-1, 1)
    assert torch.allclose(table[c].view(3, f, f), image[:, f : 2 * f, f : 2 * f], atol=1e-5)
    assert len({tuple(row.round(decimals=3).tolist()) for row in table}) > 32  # codes look different


def test_a_model_of_other_assets_is_refused_naming_what_it_needs(assets):
    from dataclasses import replace

    config = assets.model_config(Architecture.from_name("tiny", image_positions=True, image_features=True))
    side = assets.vq_config.grid
    with pytest.raises(ValueError, match=f"image_positions 10 disagrees .* need {side * side}"):
        assets.check(replace(config, image_positions=10), assets.vocab)
    with pytest.raises(ValueError, match="image_codes 7 disagrees with the vocabulary's 64"):
        assets.check(replace(config, image_codes=7), assets.vocab)
    with pytest.raises(ValueError, match="vocab_size .* disagrees"):
        assets.check(replace(config, vocab_size=config.vocab_size + 1), assets.vocab)
    other = replace(assets.vocab, codebook_size=128)
    with pytest.raises(ValueError, match="has 64 codes but the model's vocabulary was laid out for 128"):
        assets.check(config, other)
