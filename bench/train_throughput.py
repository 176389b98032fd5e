"""Training throughput of the unified Transformer: the path training takes here beside today's
reference, measured in one run, and the fraction of matmul peak achieved.

    python bench/train_throughput.py                          # the shapes config on this machine
    python bench/train_throughput.py --breakdown              # + where one step's time goes, both paths
    python bench/train_throughput.py --preset 100m --seq-len 4096 --batch 8   # on a GPU

The path: the precision `trainer.precision: auto` picks on this machine (bf16 mixed where bf16
matmuls measure clearly faster, else fp32: omni.training.precision) and the blocks compiled
(`model.compile`, as configs/shapes/model.yaml trains); the reference: fp32, eager. The two
alternate in timed windows, each a fresh model from the same initial weights. Each step is a
full optimiser step (forward, backward, AdamW) on packed rows shaped like the shapes training
data (documents of text followed by a 64-token bidirectional image block). FLOPs per token are
6 N (N: parameters in matmuls, i.e. without the input embedding) plus 12 L T d for attention
(PaLM's accounting); the peak is the best of large square matmuls in the path's dtype, measured
in the same process. Prints one JSON object last: `tokens_per_s`, `tokens_per_s_reference`,
`speedup`, `dtype`, `peak_fraction` (of the path, against its dtype's peak) and
`peak_fraction_reference`.
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
from omni.training.precision import choose_precision, matmul_tflops, sync

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


def breakdown(step, steps: int = 3) -> dict[str, float]:
    """Milliseconds per step by kind of work (the profiler's self time of each operator)."""
    from torch.profiler import profile

    kinds = {
        "matmul": ("aten::mm", "aten::bmm", "aten::addmm", "aten::linear", "mkl", "onednn"),
        "attention": ("scaled_dot_product", "flash_attention"),
        "optimizer": ("Optimizer", "_foreach", "addcmul", "lerp", "addcdiv"),
        "compiled fused element-wise": ("graph_", "CompiledFxGraph", "Torch-Compiled", "TorchDynamo"),
        "dtype casts and copies": ("aten::copy_", "aten::_to_copy", "aten::to"),
    }
    with profile() as prof:
        for _ in range(steps):
            step()
    totals: dict[str, float] = {}
    for event in prof.key_averages():
        kind = next((k for k, marks in kinds.items() if any(m in event.key for m in marks)), "other")
        totals[kind] = totals.get(kind, 0.0) + event.self_cpu_time_total / 1e3 / steps
    return {k: round(v, 1) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--preset", default="shapes", help="shapes (the demo config) or a preset of omni.model.PRESETS"
    )
    p.add_argument("--batch", type=int, default=8, help="rows per step (the shapes config trains on 8)")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--seconds", type=float, default=20.0, help="timed training per path")
    p.add_argument("--windows", type=int, default=4, help="alternating timed windows per path")
    p.add_argument("--attention", default="auto", help="attention backend (auto, sdpa, flex, xformers)")
    p.add_argument("--precision", default="auto", help="the path's precision: auto, bf16-mixed or 32-true")
    p.add_argument("--no-compile", action="store_true", help="the path without torch.compile")
    p.add_argument("--checkpointing", action="store_true", help="activation checkpointing")
    p.add_argument("--breakdown", action="store_true", help="profile one step of each path by kind of work")
    p.add_argument("--dim", type=int, help="override the preset's width")
    p.add_argument("--n-layers", type=int, help="override the preset's depth")
    p.add_argument("--n-heads", type=int, help="override the preset's query heads")
    args = p.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.preset == "shapes":
        config = ModelConfig(**SHAPES, attention=args.attention)
    else:
        config = ModelConfig.from_name(args.preset, vocab_size=32768, attention=args.attention)
    config.max_seq_len = max(config.max_seq_len, args.seq_len)
    for field, value in (("dim", args.dim), ("n_layers", args.n_layers), ("n_heads", args.n_heads)):
        if value is not None:
            setattr(config, field, value)
    config.__post_init__()  # re-validate the overridden shape
    choice = choose_precision(device) if args.precision == "auto" else None
    precision = choice.precision if choice else args.precision
    if choice:
        print(choice)
    batch = packed_batch(args.batch, args.seq_len, config.vocab_size, device)

    def make_step(bf16: bool, compiled: bool):
        torch.manual_seed(0)
        model = Transformer(config).to(device)
        model.activation_checkpointing = args.checkpointing
        if compiled:
            for block in model.blocks:
                block.compile()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device == "cuda")
        tokens, targets, positions, vis, image_index = batch

        def step():
            with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
                logits = model(tokens, vis, positions=positions, image_index=image_index)
                loss, _ = training_loss(logits, targets, z_loss=config.z_loss)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return model, step

    paths = {
        "path": make_step(precision.startswith("bf16"), not args.no_compile),
        "reference": make_step(False, False),
    }
    warmup = {}
    for name, (_, step) in paths.items():
        start = time.perf_counter()
        for _ in range(3):  # allocator, kernel choice, compilation
            step()
        sync(device)
        warmup[name] = time.perf_counter() - start
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    steps, seconds = dict.fromkeys(paths, 0), dict.fromkeys(paths, 0.0)
    for _ in range(args.windows):
        for name, (_, step) in paths.items():
            start = time.perf_counter()
            while time.perf_counter() - start < args.seconds / args.windows:
                step()
                steps[name] += 1
            sync(device)
            seconds[name] += time.perf_counter() - start
    rate = {name: steps[name] * args.batch * args.seq_len / seconds[name] for name in paths}

    model = paths["path"][0]
    n = model.num_params(embedding=False)
    flops_per_token = 6 * n + 12 * config.n_layers * args.seq_len * config.dim
    peak_n, peak_s = (2048, 3.0) if device == "cpu" else (8192, 3.0)
    peak_fp32 = matmul_tflops(device, torch.float32, peak_n, peak_s)
    peak = (
        matmul_tflops(device, torch.bfloat16, peak_n, peak_s) if precision.startswith("bf16") else peak_fp32
    )
    if device == "cuda":
        peak_memory = torch.cuda.max_memory_allocated() / 2**30
        device_name = torch.cuda.get_device_name()
    else:
        peak_memory = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
        device_name = f"cpu x{torch.get_num_threads()} threads"
    result = {
        "device": device_name,
        "preset": args.preset,
        "dim": config.dim,
        "n_layers": config.n_layers,
        "params_non_embedding": n,
        "batch": args.batch,
        "seq_len": args.seq_len,
        "attention": model.backend(device)
        if not (precision.startswith("bf16") and device == "cpu" and args.attention == "auto")
        else "math (auto under bf16 on a CPU)",
        "dtype": "bfloat16 mixed" if precision.startswith("bf16") else "float32",
        "compile": not args.no_compile,
        "tokens_per_s": round(rate["path"], 1),
        "tokens_per_s_reference": round(rate["reference"], 1),
        "speedup": round(rate["path"] / rate["reference"], 3),
        "warmup_s": {k: round(v, 1) for k, v in warmup.items()},
        "flops_per_token": flops_per_token,
        "achieved_tflops": round(rate["path"] * flops_per_token / 1e12, 4),
        "matmul_peak_tflops": round(peak, 4),
        "peak_fraction": round(rate["path"] * flops_per_token / 1e12 / peak, 4),
        "matmul_peak_tflops_fp32": round(peak_fp32, 4),
        "peak_fraction_reference": round(rate["reference"] * flops_per_token / 1e12 / peak_fp32, 4),
        "peak_memory_gib": round(peak_memory, 2),
    }
    if args.breakdown:
        result["ms_per_step"] = {name: round(1e3 * seconds[name] / steps[name], 1) for name in paths}
        result["breakdown_ms"] = {name: breakdown(step) for name, (_, step) in paths.items()}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
