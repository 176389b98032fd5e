"""The VQ-GAN tokenizer: quantizer gradients and restarts, training signal, export round trip."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from omni.tokenizers import VQConfig, VQFolderError, VQModel, load_vq, save_vq
from omni.tokenizers.losses import LPIPS, PatchDiscriminator, hinge_d_loss, make_perceptual
from omni.tokenizers.metrics import psnr, ssim
from omni.tokenizers.quantize import VectorQuantizer

TINY = VQConfig(
    resolution=16, architecture="patch", downsample=4, channels=32, num_blocks=1, codebook_size=64
)


def test_beta_weights_the_commitment_term_only():
    # The codebook gradient must not depend on beta; the encoder's gradient must scale with it.
    torch.manual_seed(0)
    z0 = torch.randn(2, 8, 3, 3)
    grads = {}
    for beta in (0.25, 1.0):
        q = VectorQuantizer(codebook_size=16, code_dim=8, beta=beta, restart_every=0)
        q.codebook.data = torch.randn(16, 8, generator=torch.Generator().manual_seed(1))
        q.initialized.fill_(True)
        z = z0.clone().requires_grad_(True)
        out = q(z)
        out.loss.backward()  # only the VQ loss: no reconstruction gradient through the straight-through path
        grads[beta] = (z.grad.clone(), q.codebook.grad.clone())
    assert torch.allclose(grads[0.25][1], grads[1.0][1])  # codebook term: beta-free
    assert torch.allclose(grads[1.0][0], 4 * grads[0.25][0], atol=1e-7)  # commitment: proportional to beta
    assert grads[0.25][0].abs().sum() > 0 and grads[0.25][1].abs().sum() > 0


def test_straight_through_passes_reconstruction_gradient_to_the_encoder():
    q = VectorQuantizer(codebook_size=16, code_dim=4, restart_every=0)
    q.eval()
    z = torch.randn(1, 4, 2, 2, requires_grad=True)
    out = q(z)
    out.quantized.sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert q.codebook.grad is None  # the forward value e is detached on the reconstruction path


def test_codebook_initialised_from_encoder_outputs_and_codes_in_range():
    q = VectorQuantizer(codebook_size=32, code_dim=8)
    z = torch.randn(4, 8, 4, 4) + 5.0  # far from the random initial codebook
    q.train()
    out = q(z)
    assert bool(q.initialized)
    flat = F.normalize(z.permute(0, 2, 3, 1).reshape(-1, 8), dim=-1)
    # every code is now (nearly) one of the normalised encoder outputs
    sims = q.normalized_codebook() @ flat.t()
    assert sims.max(1).values.min() > 0.99
    assert out.codes.min() >= 0 and out.codes.max() < 32 and out.codes.shape == (4, 4, 4)


def test_dead_codes_are_restarted_at_encoder_outputs():
    torch.manual_seed(0)
    q = VectorQuantizer(codebook_size=32, code_dim=8, restart_every=10, usage_decay=0.5)
    q.train()
    z = torch.randn(2, 8, 4, 4)
    q(z)  # initialise
    q.codebook.data[:16] = -F.normalize(torch.ones(16, 8), dim=-1) * 1.0  # park half the codes far away
    z_pos = torch.rand(2, 8, 4, 4) + 0.1  # all-positive outputs never pick the parked codes
    restarted = 0.0
    for _ in range(10):
        out = q(z_pos)
        restarted += float(out.stats["restarted"])
    assert restarted >= 16
    assert (q.codebook.data[:16] @ torch.ones(8)).min() > 0  # the parked codes moved to the data
    used = q(z_pos).codes.unique()
    assert len(used) > 1


def test_training_step_overfits_a_tiny_batch():
    torch.manual_seed(0)
    model = VQModel(TINY)
    x = torch.rand(8, 3, 16, 16) * 2 - 1
    x[:, :, 4:12, 4:12] = 1.0
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(150):
        rec, q = model(x)
        loss = F.mse_loss(rec, x) + F.l1_loss(rec, x) + q.loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if first is None:
            first = psnr(rec.detach(), x).mean()
    model.eval()
    final = psnr(model.decode(model.encode(x)), x).mean()
    assert final > first + 3.0, (float(first), float(final))


def test_encode_decode_shapes_and_bad_input():
    model = VQModel(TINY).eval()
    codes = model.encode(torch.zeros(2, 3, 16, 16))
    assert codes.shape == (2, 16) and codes.dtype == torch.int64
    assert model.decode(codes).shape == (2, 3, 16, 16)
    assert model.decode(codes.view(2, 4, 4)).shape == (2, 3, 16, 16)
    with pytest.raises(ValueError, match="multiples of 4"):
        model.encode(torch.zeros(1, 3, 15, 16))
    with pytest.raises(ValueError, match=r"\[0, 64\)"):
        model.decode(torch.full((1, 16), 64))


def test_presets_build_and_conv_architecture_runs():
    for name in ("f16-256", "f8-256"):
        cfg = VQConfig.from_name(name)
        assert cfg.resolution == 256 and cfg.codebook_size == 16384
    small = VQConfig(
        resolution=32,
        architecture="conv",
        downsample=8,
        channels=16,
        channel_mult=(1, 1, 2, 2),
        num_blocks=1,
        codebook_size=32,
    )
    model = VQModel(small).eval()
    assert model.encode(torch.zeros(1, 3, 32, 32)).shape == (1, 16)
    assert model.decode(torch.zeros(1, 16, dtype=torch.long)).shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match="unknown VQ preset"):
        VQConfig.from_name("nope")
    with pytest.raises(ValueError, match="channel_mult"):
        VQConfig(architecture="conv", downsample=8, channel_mult=(1, 2))


def test_export_load_round_trip_is_bit_exact(tmp_path):
    torch.manual_seed(0)
    model = VQModel(TINY)
    model.train()
    model(torch.randn(4, 3, 16, 16))  # initialise the codebook from data
    model.eval()
    save_vq(model, tmp_path / "vq")
    loaded = load_vq(tmp_path / "vq")
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    assert torch.equal(model.encode(x), loaded.encode(x))
    assert torch.equal(model.decode(model.encode(x)), loaded.decode(loaded.encode(x)))
    assert not list((tmp_path / "vq").glob(".*.tmp"))


def test_bad_vq_folders_give_clear_errors(tmp_path):
    model = VQModel(TINY)
    good = save_vq(model, tmp_path / "good")
    with pytest.raises(VQFolderError, match="does not exist"):
        load_vq(tmp_path / "missing")
    trunc = save_vq(model, tmp_path / "trunc")
    data = (trunc / "model.safetensors").read_bytes()
    (trunc / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(VQFolderError, match="truncated"):
        load_vq(trunc)
    nofile = save_vq(model, tmp_path / "nofile")
    (nofile / "model.safetensors").unlink()
    with pytest.raises(VQFolderError, match="model.safetensors not found"):
        load_vq(nofile)
    mismatch = save_vq(VQModel(VQConfig(**{**TINY.to_dict(), "codebook_size": 128})), tmp_path / "mismatch")
    (mismatch / "config.json").write_text((good / "config.json").read_text())
    with pytest.raises(VQFolderError, match="different models"):
        load_vq(mismatch)
    cfg = json.loads((good / "config.json").read_text())
    cfg["vq"]["colour"] = 1
    (good / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(VQFolderError, match="unknown VQ config keys"):
        load_vq(good)
    cfg["vq"].pop("colour")
    cfg["vq"]["downsample"] = 3
    (good / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(VQFolderError, match="power of two"):
        load_vq(good)


def test_metrics_and_losses():
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    assert torch.all(ssim(x, x) > 0.999)
    assert torch.all(psnr(x, x) > 90)
    assert torch.all(ssim(-x, x) < 0.5)
    d = PatchDiscriminator(channels=8, layers=2)
    logits = d(x)
    assert logits.ndim == 4 and logits.shape[1] == 1
    assert hinge_d_loss(torch.full((2,), 2.0), torch.full((2,), -2.0)) == 0
    assert make_perceptual("none") is None
    with pytest.raises(ValueError, match="nothing is downloaded"):
        make_perceptual("lpips")


def test_lpips_loads_only_local_weights(tmp_path):
    from safetensors.torch import save_file

    reference = LPIPS()
    torch.manual_seed(0)
    state = {k: torch.randn_like(v) * 0.05 for k, v in reference.state_dict().items()}
    state = {k: (v.abs() if k.startswith("lin") else v) for k, v in state.items()}
    save_file(state, str(tmp_path / "lpips.safetensors"))
    lpips = make_perceptual("lpips", str(tmp_path / "lpips.safetensors"))
    assert torch.equal(lpips.lin[0].weight, state["lin.0.weight"])
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    assert float(lpips(x, x)) == 0.0
    assert float(lpips(x, x.flip(-1))) > 0.0
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        LPIPS.from_file(tmp_path / "none.safetensors")
    save_file({"vgg.0.weight": torch.zeros(1)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match="do not fit"):
        LPIPS.from_file(tmp_path / "bad.safetensors")
