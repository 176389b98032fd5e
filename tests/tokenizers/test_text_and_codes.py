"""Text BPE training and wrapping; pre-tokenizing image shards into code shards."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile

import pytest
import torch
from conftest import REPO

from omni.data.codes import npy_to_codes
from omni.tokenizers import VQConfig, VQModel, save_vq
from omni.tokenizers.encode import encode_shard
from omni.tokenizers.text import SPECIAL_TOKENS, TextTokenizer, train_bpe


@pytest.fixture(scope="module")
def tokenizer():
    corpus = [
        "a red circle to the left of a blue square",
        "what color is the triangle?",
        "there is a cyan",
    ] * 50
    return TextTokenizer(train_bpe(corpus, vocab_size=400))


def test_bpe_round_trips_text(tokenizer):
    for text in ("a red circle on the left", "Unseen wörds, émojis 🙂 and\ttabs!", "", "  spaces  "):
        assert tokenizer.decode(tokenizer.encode(text)) == text
    assert len(tokenizer.encode("a red circle to the left of a blue square")) < 15  # merges were learned


def test_special_tokens_are_reserved_and_atomic(tokenizer):
    ids = tokenizer.special_ids()
    assert list(ids) == list(SPECIAL_TOKENS) and sorted(ids.values()) == list(range(len(SPECIAL_TOKENS)))
    boi, mask = tokenizer.token_id("<|boi|>"), tokenizer.token_id("<|mask|>")
    assert tokenizer.encode("<|boi|><|mask|>red<|eoi|>")[:2] == [boi, mask]
    assert tokenizer.decode(tokenizer.encode("<|boi|>red"), skip_special_tokens=True) == "red"
    assert tokenizer.decode(tokenizer.encode("<|boi|>red"), skip_special_tokens=False) == "<|boi|>red"
    with pytest.raises(KeyError, match="<\\|nope\\|>"):
        tokenizer.token_id("<|nope|>")


def test_save_load_and_bad_files(tokenizer, tmp_path):
    tokenizer.save(tmp_path / "tokenizer.json")
    loaded = TextTokenizer.from_file(tmp_path / "tokenizer.json")
    assert loaded.encode("a blue square") == tokenizer.encode("a blue square")
    with pytest.raises(FileNotFoundError, match="train_text.py"):
        TextTokenizer.from_file(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a valid tokenizer.json"):
        TextTokenizer.from_file(tmp_path / "bad.json")


def test_train_text_cli_on_shards(shapes_dir, tmp_path):
    out = tmp_path / "tok.json"
    res = subprocess.run(
        [
            sys.executable,
            str(REPO / "tokenizers/train_text.py"),
            "--shards",
            str(shapes_dir / "train-*.tar"),
            "--out",
            str(out),
            "--vocab-size",
            "512",
        ],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    assert "300 captions" in res.stdout and "qa" in res.stdout
    tok = TextTokenizer.from_file(out)
    assert tok.vocab_size <= 512 and len(tok.special_ids()) == len(SPECIAL_TOKENS)
    assert tok.decode(tok.encode("how many shapes are there? two")) == "how many shapes are there? two"


def _tiny_vq(tmp_path):
    torch.manual_seed(0)
    vq = VQModel(VQConfig(resolution=32, channels=16, num_blocks=1, codebook_size=64))
    save_vq(vq, tmp_path / "vq")
    return vq.eval()


def test_encode_shard_keeps_text_and_skips_bad_images(shapes_dir, tmp_path):
    vq = _tiny_vq(tmp_path)
    src = tmp_path / "src-000000.tar"
    data = (shapes_dir / "val-000000.tar").read_bytes()
    src.write_bytes(data)
    # Append one undecodable sample by rewriting the shard with an extra member pair.
    with tarfile.open(src) as t:
        members = [(m, t.extractfile(m).read()) for m in t if m.isreg()]
    with tarfile.open(src, "w") as t:
        for m, payload in members + [
            (tarfile.TarInfo("zzz.png"), b"garbage"),
            (tarfile.TarInfo("zzz.txt"), b"x"),
        ]:
            m.size = len(payload)
            t.addfile(m, io.BytesIO(payload))
    counts = encode_shard(vq, str(src), tmp_path / "out-000000.tar", batch_size=16)
    assert counts == {"encoded": 50, "skipped: undecodable image": 1}
    with tarfile.open(tmp_path / "out-000000.tar") as t:
        files = {m.name: t.extractfile(m).read() for m in t}
    codes = npy_to_codes(files["000000003.codes.npy"])
    assert codes.shape == (8, 8) and codes.dtype == "int16" and 0 <= codes.min() and codes.max() < 64
    originals = {m.name: payload for m, payload in members}
    assert files["000000003.txt"] == originals["000000003.txt"]
    assert "scene" in json.loads(files["000000003.json"])
    # The codes are the VQ's encoding of the image.
    from PIL import Image

    from omni.data.images import to_tensor

    img = to_tensor(Image.open(io.BytesIO(originals["000000003.png"])).convert("RGB"), 32)
    assert torch.equal(vq.encode(img[None]).view(8, 8), torch.from_numpy(codes).long())


def test_encode_shards_cli_resumes(shapes_dir, tmp_path):
    _tiny_vq(tmp_path)
    cmd = [
        sys.executable,
        str(REPO / "tokenizers/encode_shards.py"),
        "--vq",
        str(tmp_path / "vq"),
        "--shards",
        str(shapes_dir / "*.tar"),
        "--out",
        str(tmp_path / "codes"),
        "--batch-size",
        "64",
    ]
    first = subprocess.run(cmd, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    assert "encoded 350 samples from 4 shards" in first.stdout
    # Not a terminal (a log): compact progress lines, never a bar's carriage returns.
    assert "\r" not in first.stdout + first.stderr and "[encode done] 350/350 img | " in first.stderr
    (tmp_path / "codes" / "train-000001.tar").unlink()  # as if the run died before this shard
    second = subprocess.run(cmd, capture_output=True, text=True)
    assert (
        "3 of 4 shards already encoded" in second.stdout
        and "encoded 100 samples from 1 shards" in second.stdout
    )
    bad = subprocess.run(cmd[:3] + [str(tmp_path / "none")] + cmd[4:], capture_output=True, text=True)
    assert bad.returncode == 2 and "does not exist" in bad.stderr


def test_a_rerun_with_another_vq_refuses_to_mix_codes_unless_overwriting(shapes_dir, tmp_path):
    """Codes of two tokenizers must never share a folder silently (the rerun used to skip the old
    shards and relabel them with the new VQ's facts)."""
    import json

    from omni.tokenizers.export import vq_fingerprint

    _tiny_vq(tmp_path / "a")
    torch.manual_seed(1)  # a retrained VQ: same architecture and codebook size, other weights
    save_vq(
        VQModel(VQConfig(resolution=32, channels=16, num_blocks=1, codebook_size=64)), tmp_path / "b" / "vq"
    )
    out = tmp_path / "codes"

    def encode(vq, *extra, shards="val-*.tar"):
        cmd = [
            sys.executable,
            str(REPO / "tokenizers/encode_shards.py"),
            "--vq",
            str(vq),
            "--shards",
            str(shapes_dir / shards),
            "--out",
            str(out),
            *extra,
        ]
        return subprocess.run(cmd, capture_output=True, text=True)

    assert encode(tmp_path / "a" / "vq").returncode == 0
    info = json.loads((out / "codes_info.json").read_text())
    a, b = vq_fingerprint(tmp_path / "a" / "vq"), vq_fingerprint(tmp_path / "b" / "vq")
    assert a != b and info["vq_fingerprint"] == a and info["shards"]["val-000000.tar"]["vq_fingerprint"] == a
    before = (out / "val-000000.tar").read_bytes()
    again = encode(tmp_path / "a" / "vq")  # the same VQ: a resume, nothing to do
    assert again.returncode == 0 and "1 of 1 shards already encoded" in again.stdout
    refused = encode(tmp_path / "b" / "vq")
    assert refused.returncode == 2 and "encoded by another VQ" in refused.stderr
    assert "rerun with --overwrite" in refused.stderr
    # Other shards into the same folder: the folder would hold codes of two VQs, even with --overwrite.
    beside = encode(tmp_path / "b" / "vq", "--overwrite", shards="train-000000.tar")
    assert (
        beside.returncode == 2
        and "encoded by another VQ" in beside.stderr
        and "another --out" in beside.stderr
    )
    assert not (out / "train-000000.tar").exists()
    assert (out / "val-000000.tar").read_bytes() == before
    assert json.loads((out / "codes_info.json").read_text())["vq_fingerprint"] == a
    assert encode(tmp_path / "b" / "vq", "--overwrite").returncode == 0
    info = json.loads((out / "codes_info.json").read_text())
    assert info["vq_fingerprint"] == b and info["shards"]["val-000000.tar"]["vq_fingerprint"] == b
    assert (out / "val-000000.tar").read_bytes() != before and info["counts"]["encoded"] == 50
