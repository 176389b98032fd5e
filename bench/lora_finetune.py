"""Full vs LoRA fine-tuning: speed and memory of the same optimiser steps, measured in one run.

    python bench/lora_finetune.py                                   # the shapes model
    python bench/lora_finetune.py --preset 100m --batch 2 --steps 5  # where the weights dominate

Each mode runs in its own process (so its peak memory is its own): a fresh Transformer, for
`lora` with peft's adapters (rank 8 on wqkv, wo, w13, w2; omni.training.lora) and only those
trained, then full AdamW steps (forward, backward, step) on packed rows shaped like the shapes
data (bench/train_throughput.py), fp32, eager. Prints one JSON line per mode (`steps_per_s`,
`trainable`, `rss_model_mib`: resident memory once the model is built, `peak_rss_mib`: the
process's peak) and last the ratios lora / full.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
from train_throughput import SHAPES, packed_batch

from omni.model import ModelConfig, Transformer
from omni.training.lora import LoraSettings, add_lora
from omni.training.loss import training_loss

PRESETS = {
    "shapes": SHAPES,
    "100m": dict(SHAPES, dim=768, n_layers=12, n_heads=12),
}


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return kb / 1024


def child(mode: str, preset: str, batch: int, seq_len: int, steps: int) -> dict:
    torch.manual_seed(0)
    config = ModelConfig(**PRESETS[preset])
    model = Transformer(config).train()
    trainable = (
        add_lora(model, LoraSettings(rank=8))
        if mode == "lora"
        else sum(p.numel() for p in model.parameters())
    )
    rss_model = rss_mib()
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    tokens, targets, positions, vis, image_index = packed_batch(batch, seq_len, config.vocab_size, "cpu")

    def step():
        logits = model(tokens, vis, positions=positions, image_index=image_index)
        loss, _ = training_loss(logits, targets, z_loss=config.z_loss)
        loss.backward()
        optimiser.step()
        optimiser.zero_grad(set_to_none=True)

    for _ in range(2):  # warm-up: allocations, the optimiser's state
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "mode": mode,
        "preset": preset,
        "steps_per_s": steps / seconds,
        "trainable": trainable,
        "rss_model_mib": round(rss_model, 1),
        "peak_rss_mib": round(peak, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="shapes")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--child", choices=["full", "lora"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.preset, args.batch, args.seq_len, args.steps)))
        return
    results = {}
    for mode in ("full", "lora"):
        cmd = [sys.executable, __file__, "--child", mode, "--preset", args.preset, "--batch", str(args.batch),
               "--seq-len", str(args.seq_len), "--steps", str(args.steps)]  # fmt: skip
        line = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        results[mode] = json.loads(line)
        print(line)
    full, lora = results["full"], results["lora"]
    print(
        json.dumps(
            {
                "speed_lora_over_full": round(lora["steps_per_s"] / full["steps_per_s"], 3),
                "peak_rss_lora_over_full": round(lora["peak_rss_mib"] / full["peak_rss_mib"], 3),
                "training_memory_lora_over_full": round(
                    (lora["peak_rss_mib"] - lora["rss_model_mib"])
                    / (full["peak_rss_mib"] - full["rss_model_mib"]),
                    3,
                ),
                "trainable_lora_over_full": round(lora["trainable"] / full["trainable"], 4),
            }
        )
    )


if __name__ == "__main__":
    main()
