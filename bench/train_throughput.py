"""Training throughput of the unified Transformer: tokens/s and the fraction of matmul peak achieved.

    python bench/train_throughput.py                          # the shapes config, fp32, this CPU
    python bench/train_throughput.py --preset 100m --seq-len 4096 --batch 8   # on a GPU: bf16

Each step is a full optimiser step (forward, backward, AdamW) on packed rows shaped like the
shapes training data (documents of text followed by a 64-token bidirectional image block).
FLOPs per token are 6 N (N: parameters in matmuls, i.e. without the input embedding) plus
12 L T d for attention (PaLM's accounting). The peak is measured in the same process: the best
of several large square matmuls in the same dtype (fp32 on a CPU, bf16 on a GPU). Prints one
JSON object last with `tokens_per_s` and `peak_fraction` (achieved FLOP/s / measured peak).
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch

from omni.grammar import IGNORE, Placed, lay_out
from omni.model import ModelConfig, Transformer
from omni.training.loss import training_loss

# The shapes demo's model (configs/shapes/model.yaml) with its vocabulary (391 BPE + 256 codes)
# and the image fields its VQ gives it (8x8 codes of 4x4 RGB patches).
SHAPES = dict(
    dim=192,
    n_layers=4,
    n_heads=3,
    max_seq_len=256,
    vocab_size=647,
    image_positions=64,
    image_codes=256,
    image_features=48,
)


def matmul_peak(device: str, dtype: torch.dtype, n: int, seconds: float) -> float:
    """Best FLOP/s of n x n @ n x n matmuls over `seconds`."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best, deadline = 0.0, time.perf_counter() + seconds
    torch.mm(a, b)
    while time.perf_counter() < deadline:
        sync(device)
        start = time.perf_counter()
        for _ in range(4 if device == "cpu" else 50):
            torch.mm(a, b)
        sync(device)
        best = max(best, (4 if device == "cpu" else 50) * 2 * n**3 / (time.perf_counter() - start))
    return best


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def packed_batch(
    batch: int, seq_len: int, vocab_size: int, device: str, image_len: int = 64, text_len: int = 21
):
    """Random tokens in rows of documents [text, image block], the last document cut to fit."""
    g = torch.Generator().manual_seed(0)
    doc_len = text_len + image_len
    rows = []
    for _ in range(batch):
        docs = []
        for start in range(0, seq_len, doc_len):
            end, image_start = min(start + doc_len, seq_len), min(start + text_len, seq_len)
            images = [(image_start, end, True)] if end > image_start else []
            docs.append(Placed(start, end, images))
        rows.append(docs)
    laid = lay_out(rows, seq_len)
    tokens = torch.randint(0, vocab_size, (batch, seq_len), generator=g)
    targets = torch.where(torch.rand(batch, seq_len, generator=g) < 0.5, tokens, IGNORE)
    return (
        tokens.to(device),
        targets.to(device),
        laid.positions.to(device),
        laid.vis.to(device),
        laid.image_index.to(device),
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--preset", default="shapes", help="shapes (the demo config) or a preset of omni.model.PRESETS"
    )
    p.add_argument("--batch", type=int, default=8, help="rows per step (the shapes config trains on 8)")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--seconds", type=float, default=20.0, help="timed training per measurement")
    p.add_argument("--attention", default="auto", help="attention backend (auto, sdpa, flex, xformers)")
    p.add_argument("--compile", action="store_true", help="torch.compile each block")
    p.add_argument("--checkpointing", action="store_true", help="activation checkpointing")
    p.add_argument("--dim", type=int, help="override the preset's width")
    p.add_argument("--n-layers", type=int, help="override the preset's depth")
    p.add_argument("--n-heads", type=int, help="override the preset's query heads")
    args = p.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.manual_seed(0)
    if args.preset == "shapes":
        config = ModelConfig(**SHAPES, attention=args.attention)
    else:
        config = ModelConfig.from_name(args.preset, vocab_size=32768, attention=args.attention)
    config.max_seq_len = max(config.max_seq_len, args.seq_len)
    for field, value in (("dim", args.dim), ("n_layers", args.n_layers), ("n_heads", args.n_heads)):
        if value is not None:
            setattr(config, field, value)
    config.__post_init__()  # re-validate the overridden shape
    model = Transformer(config).to(device)
    model.activation_checkpointing = args.checkpointing
    if args.compile:
        for block in model.blocks:
            block.compile()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device == "cuda")
    tokens, targets, positions, vis, image_index = packed_batch(
        args.batch, args.seq_len, config.vocab_size, device
    )
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda")

    def step():
        with autocast:
            logits = model(tokens, vis, positions=positions, image_index=image_index)
            loss, _ = training_loss(logits, targets, z_loss=config.z_loss)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):  # warm-up (allocator, compilation)
        step()
    sync(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < args.seconds:
        step()
        steps += 1
    sync(device)
    elapsed = time.perf_counter() - start
    tokens_per_s = steps * args.batch * args.seq_len / elapsed

    n = model.num_params(embedding=False)
    flops_per_token = 6 * n + 12 * config.n_layers * args.seq_len * config.dim
    peak = matmul_peak(device, dtype, 2048 if device == "cpu" else 8192, 5.0 if device == "cpu" else 3.0)
    achieved = tokens_per_s * flops_per_token
    if device == "cuda":
        peak_memory = torch.cuda.max_memory_allocated() / 2**30
        device_name = torch.cuda.get_device_name()
    else:
        peak_memory = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
        device_name = f"cpu x{torch.get_num_threads()} threads"
    result = {
        "device": device_name,
        "dtype": str(dtype).removeprefix("torch."),
        "preset": args.preset,
        "dim": config.dim,
        "n_layers": config.n_layers,
        "params_non_embedding": n,
        "batch": args.batch,
        "seq_len": args.seq_len,
        "attention": model.backend(device),
        "compile": args.compile,
        "steps": steps,
        "tokens_per_s": round(tokens_per_s, 1),
        "flops_per_token": flops_per_token,
        "achieved_tflops": round(achieved / 1e12, 4),
        "matmul_peak_tflops": round(peak / 1e12, 4),
        "peak_fraction": round(achieved / peak, 4),
        "peak_memory_gib": round(peak_memory, 2),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
