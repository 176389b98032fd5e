"""omni.convert.from_llamagen_vq: a LlamaGen VQ checkpoint becomes an Omni VQ folder that gives
the codes and reconstruction LlamaGen's own code gives.

The fixture `fixtures/llamagen_vq_tiny.safetensors` was made by running LlamaGen's code outside
this project (github.com/FoundationVision/LlamaGen at ce98ec4, file
tokenizer/tokenizer_image/vq_model.py, with torch 2.14.1 on a CPU):

    torch.manual_seed(0)
    model = VQModel(ModelArgs(codebook_size=64, codebook_embed_dim=8, encoder_ch_mult=[2, 1, 1],
                              decoder_ch_mult=[2, 1, 1], z_channels=32))
    model.encoder = Encoder(ch=32, ch_mult=(2, 1, 1), num_res_blocks=2, z_channels=32)
    model.decoder = Decoder(z_channels=32, ch=32, ch_mult=(2, 1, 1), num_res_blocks=2)
    # every parameter whose name holds "norm" += 0.2 * randn (so a wrong GroupNorm mapping shows),
    # then every float tensor rounded to fp16 and back (the file stores fp16, exactly)
    model.eval()
    # image: (2, 3, 32, 32) in [-1, 1]: channels x ramp, y ramp, a disc; the second image is the
    # first mirrored and halved
    latent, _, (_, _, indices) = model.encode(image)
    reconstruction = model.decode_code(indices, latent.shape)

saved as `llamagen.<their key>` (fp16; their `quantize.codebook_used` buffer included), `image`,
`codes` (2, 64) and `reconstruction`. The base width 32 and channel_mult (2, 1, 1) make the file
small and exercise the 1x1 skips and a stem narrower than the first level.
`fixtures/llamagen_vq_layouts.json` holds the name -> shape of every tensor of their VQ-16 and
VQ-8, built with `VQ_models[name]()` on the meta device.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from omni.convert import from_llamagen_vq
from omni.convert.llamagen import LlamaGenVQError, config_of, omni_state
from omni.tokenizers.export import VQFolderError, load_vq, read_vq_config, save_vq
from omni.tokenizers.vqgan import VQConfig, VQModel

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def llamagen():
    tensors = load_file(str(FIXTURES / "llamagen_vq_tiny.safetensors"))
    state = {k.removeprefix("llamagen."): v.float() for k, v in tensors.items() if k.startswith("llamagen.")}
    return state, tensors["image"], tensors["codes"], tensors["reconstruction"]


def check_same_as_llamagen(folder: Path, llamagen) -> None:
    _, image, codes, reconstruction = llamagen
    vq = load_vq(folder)
    assert torch.equal(vq.encode(image), codes)
    torch.testing.assert_close(vq.decode(codes), reconstruction, atol=1e-4, rtol=0)


def test_a_converted_pt_gives_llamagens_codes_and_reconstruction(tmp_path, llamagen):
    state = llamagen[0]
    torch.save({"model": state}, tmp_path / "vq.pt")  # the layout of their released .pt files
    out = from_llamagen_vq(tmp_path / "vq.pt", tmp_path / "vq", resolution=32)
    check_same_as_llamagen(out, llamagen)
    config = read_vq_config(out)
    assert (config.channels, config.channel_mult, config.num_blocks, config.downsample) == (
        32,
        (2, 1, 1),
        2,
        4,
    )
    assert (config.z_channels, config.codebook_size, config.code_dim) == (32, 64, 8)
    written = json.loads((out / "config.json").read_text())["converted_from"]
    assert written["source"] == "vq.pt" and written["preset"] is None


def test_training_checkpoints_use_the_ema_weights_and_safetensors_read_too(tmp_path, llamagen):
    state = llamagen[0]
    broken = {k: torch.zeros_like(v) for k, v in state.items()}
    checkpoint = {  # what their vq_train.py saves, arguments included
        "model": broken,
        "ema": state,
        "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4}]},
        "steps": 10,
        "args": argparse.Namespace(vq_model="VQ-16", lr=1e-4),
    }
    torch.save(checkpoint, tmp_path / "0000010.pt")
    check_same_as_llamagen(from_llamagen_vq(tmp_path / "0000010.pt", tmp_path / "a", resolution=32), llamagen)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "vq.safetensors"))
    check_same_as_llamagen(
        from_llamagen_vq(tmp_path / "vq.safetensors", tmp_path / "b", resolution=32), llamagen
    )


@pytest.mark.parametrize(("theirs", "preset"), [("VQ-16", "f16-256"), ("VQ-8", "f8-256")])
def test_llamagens_released_layouts_are_omnis_presets(theirs, preset):
    layout = json.loads((FIXTURES / "llamagen_vq_layouts.json").read_text())["layouts"][theirs]
    state = {k: torch.empty(shape, device="meta") for k, shape in layout.items()}
    assert config_of(state, theirs) == VQConfig.from_name(preset)
    with torch.device("meta"):
        expected = VQModel(VQConfig.from_name(preset)).state_dict()
    converted = omni_state(state)
    quantizer_buffers = {"quantizer.initialized", "quantizer.usage_ema", "quantizer.steps"}
    assert set(converted) == set(expected) - quantizer_buffers
    assert all(converted[k].shape == expected[k].shape for k in converted)


def test_what_cannot_be_converted_is_refused_with_the_reason(tmp_path, llamagen):
    state = llamagen[0]
    with pytest.raises(FileNotFoundError, match="vq_ds16_c2i.pt"):
        from_llamagen_vq(tmp_path / "missing.pt", tmp_path / "x")
    torch.save({"model": {"tok_embeddings.weight": torch.zeros(4, 4)}}, tmp_path / "gpt.pt")
    with pytest.raises(LlamaGenVQError, match="no 'quantize.embedding.weight'"):
        from_llamagen_vq(tmp_path / "gpt.pt", tmp_path / "x")
    torch.save({"model": state, "extra": Path("anything")}, tmp_path / "pickled.pt")  # not a plain container
    with pytest.raises(LlamaGenVQError, match="will not unpickle"):
        from_llamagen_vq(tmp_path / "pickled.pt", tmp_path / "x")
    (tmp_path / "truncated.pt").write_bytes((tmp_path / "gpt.pt").read_bytes()[:100])
    with pytest.raises(LlamaGenVQError, match="not a readable PyTorch checkpoint"):
        from_llamagen_vq(tmp_path / "truncated.pt", tmp_path / "x")
    nan = dict(state)
    nan["decoder.conv_out.weight"] = torch.full_like(state["decoder.conv_out.weight"], float("nan"))
    torch.save({"model": nan}, tmp_path / "nan.pt")
    with pytest.raises(LlamaGenVQError, match=r"decoder.head.2.weight holds NaN"):
        from_llamagen_vq(tmp_path / "nan.pt", tmp_path / "x")
    extra = {**state, "encoder.conv_blocks.0.res.0.extra.weight": torch.zeros(1)}
    torch.save({"model": extra}, tmp_path / "extra.pt")
    with pytest.raises(LlamaGenVQError, match="unexpected"):
        from_llamagen_vq(tmp_path / "extra.pt", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_a_conv_vq_of_the_earlier_layout_is_refused_with_the_fix_and_patch_ones_still_load(tmp_path):
    def written_by_0_1_0(config: VQConfig, folder: Path) -> Path:
        save_vq(VQModel(config), folder)
        raw = json.loads((folder / "config.json").read_text())
        raw["format_version"] = 1
        del raw["vq"]["z_channels"]
        (folder / "config.json").write_text(json.dumps(raw))
        return folder

    conv = VQConfig(
        resolution=16, architecture="conv", downsample=2, channels=32, channel_mult=(1, 1), codebook_size=8
    )
    with pytest.raises(VQFolderError, match="retrain it"):
        load_vq(written_by_0_1_0(conv, tmp_path / "conv"))
    patch = VQConfig(resolution=16, downsample=4, channels=16, codebook_size=8)
    assert load_vq(written_by_0_1_0(patch, tmp_path / "patch")).config == patch


def test_the_command_converts_and_reports_errors_in_one_line(tmp_path, llamagen, capsys):
    from omni.commands import main

    torch.save({"model": llamagen[0]}, tmp_path / "vq.pt")
    out = tmp_path / "vq"
    assert (
        main(
            [
                "convert",
                "from-llamagen-vq",
                "--src",
                str(tmp_path / "vq.pt"),
                "--out",
                str(out),
                "--resolution",
                "32",
            ]
        )
        == 0
    )
    assert "codebook 64 x 8" in capsys.readouterr().out
    check_same_as_llamagen(out, llamagen)
    assert (
        main(["convert", "from-llamagen-vq", "--src", str(tmp_path / "no.pt"), "--out", str(tmp_path / "y")])
        == 2
    )
    assert "no.pt not found" in capsys.readouterr().err
