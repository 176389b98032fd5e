"""The understanding encoder (`understanding: encoder`): its shapes and determinism, how a read
image sits in the sequence (bidirectional, isolated per document, as code images are), pretrained
weights from a test-made file, the release round trip, and caption/VQA through the pipeline."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from conftest import TINY_ENCODER, tiny_model
from safetensors.torch import save_file

import omni
from omni.attention import Visibility
from omni.data.packing import Packer, TaskBuilder
from omni.grammar import Grammar
from omni.understanding import EncoderConfig, UnderstandingEncoder, load_encoder_weights


def encoder_model(model_assets, seed=0):
    torch.manual_seed(seed)
    model, assets = tiny_model(
        model_assets, understanding="encoder", encoder=EncoderConfig(**TINY_ENCODER), image_positions=True
    )
    return model.eval(), assets


def pixels(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_encoder_shapes_sizes_and_determinism(model_assets):
    a, assets = encoder_model(model_assets)
    b, _ = encoder_model(model_assets)
    # Sized from the VQ: 32 px images, 4 px patches, one vector per code, at the model's width.
    assert (a.config.encoder.image_size, a.config.encoder.patch_size) == (32, 4)
    x = pixels(3)
    out = a.understanding(x)
    assert out.shape == (3, assets.image_tokens, a.config.dim)
    assert torch.equal(out, b.understanding(x))  # same seed, same weights, same vectors
    assert torch.equal(out[1:2], a.understanding(x[1:2]))  # an image's vectors do not depend on its batch
    with pytest.raises(ValueError, match=r"reads \(N, 3, 32, 32\) pixels, got \(3, 3, 16, 16\)"):
        a.understanding(torch.zeros(3, 3, 16, 16))
    with pytest.raises(ValueError, match="gives 16 patches, but an image is 8x8 = 64 VQ codes"):
        EncoderConfig(patch_size=8).resolved(32, 8)
    with pytest.raises(ValueError, match="connector must be one of"):
        EncoderConfig(connector="qformer")


def caption_rows(model_assets, n_docs=2):
    """A packed batch of `n_docs` caption documents in one row, their images read by pixels."""
    from omni.tokenizers.text import TextTokenizer
    from omni.vocab import Vocab

    tok = TextTokenizer.from_file(model_assets.tokenizer)
    vocab = Vocab.build(tok, codebook_size=64)
    builder = TaskBuilder(vocab, tok, "ar", read_resolution=32)
    packer = Packer(seq_len=256, batch_size=1, pad_id=vocab.special("pad"), read_resolution=32)
    rng = random.Random(0)
    docs = [
        builder.build(
            {
                "key": f"k{i}",
                "codes": list(range(64)),
                "text": "a red circle",
                "qa": [],
                "pixels": pixels(1, i)[0],
            },
            "caption",
            rng,
        )
        for i in range(n_docs)
    ]
    for doc in docs:
        packer.add(doc)
    (batch,) = packer.flush()
    return batch, docs


def test_read_images_are_bidirectional_and_isolated_per_document_as_code_images_are(model_assets):
    model, _ = encoder_model(model_assets)
    batch, docs = caption_rows(model_assets)
    at = batch["read_at"][0]
    starts = [int(i) for i in torch.nonzero(batch["image_index"][0] == 0)]
    assert batch["read_pixels"].shape == (2, 3, 32, 32) and int(at.sum()) == 128
    assert [int(i) for i in torch.nonzero(at)][::64] == starts  # each image's block, in order

    def logits(vectors: torch.Tensor) -> torch.Tensor:
        model.understanding.forward = lambda px: vectors  # what the encoder gives, set by the test
        vis = Visibility(batch["doc"], batch["last"])
        return model(
            batch["tokens"], vis, positions=batch["positions"], image_index=batch["image_index"],
            read_pixels=batch["read_pixels"], read_at=batch["read_at"],
        )[0]  # fmt: skip

    vectors = torch.randn(2, 64, model.config.dim)
    base = logits(vectors)
    changed = vectors.clone()
    changed[0, -1] += 1.0  # only the last patch of the first image
    moved = (logits(changed) - base).abs().amax(-1) > 1e-6
    first_end = len(docs[0])
    # Bidirectional: the first image's first position sees its last patch; causal before the image;
    # the text after it sees it; the second document never does.
    assert moved[starts[0]] and not moved[: starts[0]].any()
    assert moved[starts[0] + 64 : first_end].all()
    assert not moved[first_end:].any()

    # The same rules as a code image: the same layout, with the codes embedded instead.
    codes_model, _ = tiny_model(model_assets, image_positions=True)
    vis = Visibility(batch["doc"], batch["last"])
    tokens = batch["tokens"].clone()
    base = codes_model(tokens, vis, positions=batch["positions"], image_index=batch["image_index"])[0]
    tokens[0, starts[0] + 63] -= 1  # another code for the first image's last patch
    moved_codes = (
        codes_model(tokens, vis, positions=batch["positions"], image_index=batch["image_index"])[0] - base
    )
    assert torch.equal(moved, moved_codes.abs().amax(-1) > 1e-6)


def test_the_encoder_replaces_the_codes_of_read_images(model_assets):
    model, assets = encoder_model(model_assets)
    batch, _ = caption_rows(model_assets, n_docs=1)
    first_code = assets.vocab.image_offset
    vis = Visibility(batch["doc"], batch["last"])
    args = dict(positions=batch["positions"], image_index=batch["image_index"], read_at=batch["read_at"])
    out = model(batch["tokens"], vis, read_pixels=batch["read_pixels"], **args)
    shifted = first_code + (batch["tokens"] - first_code + 7) % 64  # every read code another one
    other_codes = torch.where(batch["read_at"], shifted, batch["tokens"])
    assert torch.equal(out, model(other_codes, vis, read_pixels=batch["read_pixels"], **args))
    assert not torch.allclose(out, model(batch["tokens"], vis, read_pixels=-batch["read_pixels"], **args))
    with pytest.raises(ValueError, match="read_at marks 64 positions but 2 read images"):
        model(batch["tokens"], vis, read_pixels=pixels(2), **args)
    codes_model, _ = tiny_model(model_assets)
    with pytest.raises(ValueError, match="reads images as their VQ codes"):
        codes_model(batch["tokens"], vis, read_pixels=batch["read_pixels"], read_at=batch["read_at"])


def timm_vit(class_token: bool):
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(1)
    # As a timm classifier is saved: with its head, which the encoder drops.
    return VisionTransformer(
        img_size=32, patch_size=4, embed_dim=32, depth=1, num_heads=2, num_classes=10, class_token=class_token
    )


def test_pretrained_weights_load_from_a_timm_file_and_mismatches_name_key_and_shapes(tmp_path):
    config = EncoderConfig(image_size=32, patch_size=4, class_token=True, **TINY_ENCODER)
    pretrained = timm_vit(class_token=True)
    path = tmp_path / "vit.safetensors"
    save_file(pretrained.state_dict(), str(path))
    torch.manual_seed(0)
    encoder = UnderstandingEncoder(config, out_dim=64)
    load_encoder_weights(encoder.vit, path)
    for name, tensor in encoder.vit.state_dict().items():
        assert torch.equal(tensor, pretrained.state_dict()[name]), name
    x = pixels(2)
    want = pretrained.forward_features(x)[:, 1:]  # the patch vectors, the class token's dropped
    assert torch.allclose(encoder.vit.forward_features(x)[:, 1:], want)

    wide = UnderstandingEncoder(
        EncoderConfig(image_size=32, patch_size=4, dim=64, depth=1, heads=2, class_token=True), 64
    )
    with pytest.raises(
        ValueError, match=r"vit.safetensors: blocks.0.attn.proj.bias is \(32,\) in the file but \(64,\)"
    ):
        load_encoder_weights(wide.vit, path)
    no_cls = UnderstandingEncoder(EncoderConfig(image_size=32, patch_size=4, **TINY_ENCODER), 64)
    with pytest.raises(ValueError, match=r"(pos_embed|cls_token)"):
        load_encoder_weights(no_cls.vit, path)
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        load_encoder_weights(encoder.vit, tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="junk.safetensors cannot be read as safetensors"):
        load_encoder_weights(encoder.vit, tmp_path / "junk.safetensors")


def test_release_round_trip_is_bit_exact_and_caption_vqa_read_pixels(tiny_releases, model_assets):
    from safetensors.torch import load_file

    folder = tiny_releases["encoder"]
    pipe = omni.load_pretrained(folder)
    saved = load_file(str(folder / "model.safetensors"))
    assert any(k.startswith("understanding.vit.") for k in saved)
    assert any(k.startswith("understanding.connector.") for k in saved)
    for name, tensor in pipe.model.state_dict().items():
        assert torch.equal(tensor, saved[name]), name
    assert pipe.model.config.understanding == "encoder" and pipe.model.config.encoder.dim == 32

    image = -torch.ones(3, 32, 32)
    image[0] = 1  # red (values an 8-bit image holds exactly)
    caption = pipe.caption(image)
    assert caption == pipe.caption(image) and isinstance(caption[0], str)
    answer = pipe.answer(image, "what color is it?")
    assert isinstance(answer[0], str)
    # The sampler reads the pixels: the prompt's logits come from the encoder, not the codes.
    seen = []
    real = pipe.model.understanding.forward
    pipe.model.understanding.forward = lambda px: seen.append(px.clone()) or real(px)
    pipe.caption([image, -image])
    assert len(seen) == 1 and seen[0].shape == (2, 3, 32, 32) and torch.equal(seen[0][0], image)


def test_encoder_releases_caption_and_answer_through_sample_py(tiny_releases, tmp_path):
    from PIL import Image

    from omni.commands.sample import main as sample_main

    path = tmp_path / "red.png"
    Image.new("RGB", (48, 40), (255, 0, 0)).save(path)
    model = tiny_releases["encoder"]
    assert sample_main(["caption", "--model", str(model), "--out", str(tmp_path / "c"), str(path)]) == 0
    assert (
        sample_main(
            [
                "vqa",
                "--model",
                str(model),
                "--out",
                str(tmp_path / "v"),
                str(path),
                "--question",
                "what color?",
            ]
        )
        == 0
    )
    import json

    caption = json.loads((tmp_path / "c" / "results.json").read_text())["items"][0]["caption"]
    assert caption == omni.load_pretrained(model).caption(path)[0]


def test_grammar_gives_pixels_only_to_images_that_are_read(model_assets):
    _, assets = encoder_model(model_assets)
    grammar = Grammar(assets.vocab)
    px = pixels(1)[0]
    assert grammar.prompt("caption", image=list(range(64)), pixels=px).pixels[0] is px
    with pytest.raises(ValueError, match="reads no image"):
        grammar.document("t2i", caption=[1, 2], image=list(range(64)), pixels=px)
    np.testing.assert_equal(
        grammar.document("vqa", image=[1] * 64, question=[3], answer=[4], pixels=px).pixels[0].numpy(),
        px.numpy(),
    )


def test_the_data_module_refuses_code_shards_without_images(model_assets, shapes_dir, tmp_path):
    from omni.data.codes import record_encoded_shard
    from omni.tokenizers import load_vq
    from omni.tokenizers.encode import encode_shard
    from omni.tokenizers.export import vq_fingerprint
    from omni.training.datamodule import OmniDataModule

    vq = load_vq(model_assets.vq)
    counts = encode_shard(
        vq, str(shapes_dir / "train-000000.tar"), tmp_path / "train-000000.tar", keep_images=False
    )
    record_encoded_shard(
        tmp_path, "train-000000.tar", vq=model_assets.vq, fingerprint=vq_fingerprint(model_assets.vq),
        grid=8, codebook_size=64, source="x", counts=counts,
    )  # fmt: skip
    model, _ = encoder_model(model_assets)
    bare = OmniDataModule(str(tmp_path / "train-*.tar"), str(model_assets.tokenizer), str(model_assets.vq))
    with pytest.raises(ValueError, match=r"train-000000.tar keeps no image beside its codes; re-encode"):
        bare.connect(model.config)
    codes_model, _ = tiny_model(model_assets)
    bare.connect(codes_model.config)  # a model that reads codes trains on them as before
    assert bare.builder().read_resolution == 0
    kept = OmniDataModule(
        str(model_assets.codes / "train-*.tar"), str(model_assets.tokenizer), str(model_assets.vq)
    )
    kept.connect(model.config)
    assert kept.builder().read_resolution == 32


def test_pretrained_weights_load_from_an_open_clip_file(tmp_path):
    """A whole CLIP model's file (its text tower too): the visual tower is read, converted to
    timm's layout, and gives open_clip's own patch vectors."""
    OpenClipViT = pytest.importorskip("open_clip.transformer").VisionTransformer

    torch.manual_seed(2)
    theirs = OpenClipViT(
        image_size=32,
        patch_size=4,
        width=32,
        layers=1,
        heads=2,
        mlp_ratio=4.0,
        output_dim=16,
        output_tokens=True,
    ).eval()
    state = {f"visual.{k}": v for k, v in theirs.state_dict().items()}
    state["text_projection"] = torch.zeros(8, 16)  # the text tower is not the encoder's
    path = tmp_path / "open_clip_model.safetensors"
    save_file(state, str(path))
    config = EncoderConfig(
        image_size=32, patch_size=4, class_token=True, pre_norm=True, norm_eps=1e-5, **TINY_ENCODER
    )
    encoder = UnderstandingEncoder(config, out_dim=64).eval()
    load_encoder_weights(encoder.vit, path)
    x = pixels(2)
    _, tokens = theirs(x)
    assert torch.allclose(encoder.vit.forward_features(x)[:, 1:], tokens, atol=1e-5)
