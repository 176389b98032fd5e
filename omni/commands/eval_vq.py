"""`omni tokenizer eval` (tokenizers/eval_vq.py): evaluate a trained VQ tokenizer on image shards and print one JSON object.

    python tokenizers/eval_vq.py --vq runs/shapes/vq --shards 'data/shapes/val-*.tar'

Keys: psnr (dB), ssim, usage and perplexity of the codebook over the evaluated images, and on
shapes data scene_accuracy (the fraction of reconstructions the analyzer still reads as the
same scene), split by one- and two-object scenes.
"""

import argparse
import json
from pathlib import Path

import torch

from omni.shapes.analyzer import judge_reconstructions as shapes_judge
from omni.tokenizers import load_vq
from omni.tokenizers.evaluate import evaluate_vq


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="omni tokenizer eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--vq", required=True, help="VQ folder (config.json + model.safetensors)")
    parser.add_argument("--shards", required=True, help="image shard pattern, e.g. 'data/shapes/val-*.tar'")
    parser.add_argument("--limit", type=int, default=None, help="evaluate at most this many images")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--out", help="also write the JSON report to this file")
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    model = load_vq(args.vq)
    report = evaluate_vq(model, args.shards, args.limit, args.batch_size, judge=shapes_judge)
    text = json.dumps(report, indent=2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0
