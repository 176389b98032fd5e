"""Omni-attention semantics and backend parity (sdpa and flex against a naive reference)."""

from __future__ import annotations

import pytest
import torch

from omni.attention import (
    Segment,
    build_visibility,
    flex_attention,
    flex_block_mask,
    reference_attention,
    resolve_backend,
    sdpa_attention,
    xformers_bias,
)


def layout():
    """doc 0: text 0-2, bidirectional image 3-6, text 7-8; doc 1: text 9-10, ar image 11-12,
    text 13; padding 14-15."""
    return [
        Segment(0, 3, doc=0),
        Segment(3, 7, doc=0, image=True),
        Segment(7, 9, doc=0),
        Segment(9, 11, doc=1),
        Segment(11, 13, doc=1, image=True, bidirectional=False),
        Segment(13, 14, doc=1),
    ]


def test_each_rule_of_the_omni_mask():
    m = build_visibility([layout()], 16).dense_mask()[0, 0]
    sees = lambda q, k: bool(m[q, k])  # noqa: E731
    assert sees(2, 1) and not sees(1, 2)  # text is causal
    assert sees(3, 6) and sees(6, 3)  # bidirectional inside an image
    assert sees(4, 1) and not sees(2, 4)  # the image sees the text before it, not the reverse
    assert all(sees(8, k) for k in range(3, 7)) and sees(7, 3)  # text after an image sees all of it
    assert not sees(9, 8) and not sees(10, 2) and not sees(8, 9)  # packed documents are isolated
    assert sees(12, 11) and not sees(11, 12) and sees(13, 12)  # ar image blocks are causal
    assert sees(14, 14) and not sees(14, 13) and not sees(15, 14) and not sees(13, 14)  # padding
    assert m.any(-1).all()  # every query sees at least one key (no NaN rows)


def test_bad_segments_are_rejected():
    with pytest.raises(ValueError, match="does not fit"):
        build_visibility([[Segment(0, 20, doc=0)]], 16)
    with pytest.raises(ValueError, match="document ids"):
        build_visibility([[Segment(0, 4, doc=-2)]], 16)


def _qkv(b=2, h=2, t=16, d=8, requires_grad=False):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(b, h, t, d, generator=g, requires_grad=requires_grad) for _ in range(3)]


def _batch_vis():
    return build_visibility([layout(), [Segment(0, 5, doc=0), Segment(5, 16, doc=0, image=True)]], 16)


def test_sdpa_matches_the_reference_forward_and_backward():
    vis = _batch_vis()
    q, k, v = _qkv(requires_grad=True)
    q2, k2, v2 = (x.detach().clone().requires_grad_(True) for x in (q, k, v))
    out_ref = reference_attention(q, k, v, vis)
    out = sdpa_attention(q2, k2, v2, vis.dense_mask())
    assert torch.allclose(out, out_ref, atol=1e-5)
    grad = torch.randn_like(out)
    out_ref.backward(grad)
    out.backward(grad)
    for a, b in ((q, q2), (k, k2), (v, v2)):
        assert torch.allclose(a.grad, b.grad, atol=1e-5)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_forward_matches_the_reference_on_cpu():
    vis = _batch_vis()
    q, k, v = _qkv()
    with torch.no_grad():
        out = flex_attention(q, k, v, flex_block_mask(vis))
    assert torch.allclose(out, reference_attention(q, k, v, vis), atol=1e-5)


def test_xformers_bias_materialises_our_mask():
    vis = _batch_vis()
    bias = xformers_bias(vis, heads=2)
    mask = vis.dense_mask().expand(2, 2, 16, 16)
    assert bias.shape == (2, 2, 16, 16) and bias.stride(-2) % 8 == 0
    assert torch.equal(bias == 0, mask) and torch.isinf(bias[~mask]).all()
    # The bias used as an additive mask gives the reference result.
    q, k, v = _qkv()
    scores = (q @ k.transpose(-2, -1)) / 8**0.5 + bias
    assert torch.allclose(scores.softmax(-1) @ v, reference_attention(q, k, v, vis), atol=1e-5)


def test_backend_resolution_on_cpu():
    assert resolve_backend("auto", "cpu") == "sdpa"
    assert resolve_backend("sdpa", "cpu") == "sdpa"
    with pytest.raises(ValueError, match="not usable"):
        resolve_backend("xformers", "cpu")
    with pytest.raises(ValueError, match="must be one of"):
        resolve_backend("fast", "cpu")


def test_xformers_is_an_extra_named_when_missing(monkeypatch):
    """xformers is not a dependency (its wheels pin torch): asking for it without it names the extra."""
    import sys

    import tomllib
    from conftest import REPO

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert not any("xformers" in dep for dep in project["dependencies"])
    assert any(dep.startswith("xformers") for dep in project["optional-dependencies"]["xformers"])
    monkeypatch.setitem(sys.modules, "xformers", None)  # import xformers now raises ImportError
    monkeypatch.setitem(sys.modules, "xformers.ops", None)
    assert resolve_backend("auto", "cuda") == "flex"  # auto never needed it
    with pytest.raises(ValueError, match=r"pip install 'omni-multimodal\[xformers\]'"):
        resolve_backend("xformers", "cuda")


@pytest.mark.cuda
def test_gpu_backends_match_sdpa_forward_and_backward():
    vis = _batch_vis().to("cuda")
    for backend in ("flex", "xformers"):
        try:
            resolve_backend(backend, "cuda")
        except ValueError:
            continue
        q, k, v = (x.cuda().requires_grad_(True) for x in _qkv(d=16))  # flex's kernel needs heads >= 16
        q2, k2, v2 = (x.detach().clone().requires_grad_(True) for x in (q, k, v))
        ref = sdpa_attention(q, k, v, vis.dense_mask())
        if backend == "flex":
            out = flex_attention(q2, k2, v2, flex_block_mask(vis))
        else:
            from omni.attention import xformers_attention

            out = xformers_attention(q2, k2, v2, xformers_bias(vis, heads=2))
        assert torch.allclose(out, ref, atol=2e-3), backend
        grad = torch.randn_like(ref)
        ref.backward(grad)
        out.backward(grad)
        for a, b in ((q, q2), (k, k2), (v, v2)):
            assert torch.allclose(a.grad, b.grad, atol=2e-3), backend


def test_the_math_backend_and_its_use_under_bf16_agree_with_sdpa():
    """`math` through OmniMask (grouped queries too) gives sdpa's result; a model whose attention is
    `auto` takes it under bf16 autocast on a CPU and keeps sdpa in fp32, with the same logits."""
    from omni.attention import OmniMask
    from omni.model import ModelConfig, Transformer

    vis = _batch_vis()
    q, _, _ = _qkv()
    k, v = (torch.randn(2, 1, 16, 8, generator=torch.Generator().manual_seed(i)) for i in (1, 2))
    out = OmniMask(vis, "math", heads=2).attend(q, k, v)
    assert torch.allclose(out, OmniMask(vis, "sdpa", heads=2).attend(q, k, v), atol=1e-5)

    model = Transformer(ModelConfig.from_name("tiny", vocab_size=50)).eval()
    tokens = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(3))
    used = []
    original = OmniMask.__init__

    def spy(self, vis, backend, *args, **kwargs):
        used.append(backend)
        original(self, vis, backend, *args, **kwargs)

    with torch.no_grad(), pytest.MonkeyPatch.context() as mp:
        mp.setattr(OmniMask, "__init__", spy)
        fp32 = model(tokens, vis)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = model(tokens, vis)
    assert used == ["sdpa", "math"]
    assert (bf16.float() - fp32).abs().max() < 0.05 * fp32.abs().max()
