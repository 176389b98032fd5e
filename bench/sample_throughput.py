"""Sampling throughput: mask-mode images/s by steps with the prompt's keys and values cached and
without (recomputed every step), raster (ar) images/s with and without the KV cache, and caption
tokens/s batched vs one image at a time.

    python bench/sample_throughput.py                               # runs/shapes/model if present
    python bench/sample_throughput.py --model runs/shapes/model --batch 32 --steps 4,8,12,16
    python bench/sample_throughput.py --random                      # shapes-sized random weights

Speed does not depend on what the weights learned, except through caption lengths (a trained
model stops at <eos> where a random one may ramble), so without a model folder the benchmark
uses random weights of the shapes model's size. The ar timing runs the same weights as an ar
model: both modes have the same architecture. Text-to-image uses classifier-free guidance
(a doubled batch) as the pipeline does. Prints one JSON object last, with `kv_cache_speedup`
(ar images/s with the cache / without it) and `mask_prompt_cache_speedup` (mask mode, 12 steps
or the largest step count timed).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from omni.generate import generate_images_ar, generate_images_mask, generate_text, seeded_generator
from omni.grammar import Grammar
from omni.model import ModelConfig, Transformer
from omni.vocab import SPECIALS, Vocab


def random_setup(codebook: int = 256, text: int = 391) -> tuple[Transformer, Vocab, int]:
    """The shapes model's shape with random weights; (model, vocab, image tokens per image).

    Like the shapes BPE, the special tokens take the first text ids."""
    vocab = Vocab(text, codebook, text, {name: i for i, name in enumerate(SPECIALS)})
    config = ModelConfig.from_name("shapes", vocab_size=vocab.size)
    # The demo's image fields (8x8 codes of 4x4 RGB patches), so the table's cost is timed too.
    config = dataclasses.replace(config, image_positions=64, image_codes=codebook, image_features=48)
    return Transformer(config).eval(), vocab, 64


def timed(fn, repeats: int) -> float:
    """Best seconds of `repeats` calls after one warm-up."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", default="runs/shapes/model", help="model folder (default runs/shapes/model)"
    )
    parser.add_argument("--random", action="store_true", help="random shapes-sized weights, ignore --model")
    parser.add_argument("--batch", type=int, default=16, help="images / captions per batch (default 16)")
    parser.add_argument("--steps", default="4,8,12,16", help="mask-mode step counts to time")
    parser.add_argument("--guidance", type=float, default=2.0, help="CFG scale for image generation")
    parser.add_argument("--repeats", type=int, default=2, help="timed repeats per figure (best is kept)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)

    if not args.random and Path(args.model, "config.json").is_file():
        from omni import load_pretrained

        pipe = load_pretrained(args.model)
        model, vocab, grid, source = pipe.model, pipe.vocab, pipe.grid, args.model
        captions = [pipe.tokenizer.encode("a red circle to the left of a blue square")] * args.batch
    else:
        model, vocab, grid = random_setup()
        source = "random shapes-sized weights"
        captions = [list(range(12))] * args.batch
    print(
        f"model: {source}; {model.num_params() / 1e6:.2f} M parameters; batch {args.batch}; {grid} codes per image"
    )
    g = seeded_generator(0, model.output.weight.device)  # the samplers draw on the model's device
    report: dict = {"model": source, "batch": args.batch, "threads": torch.get_num_threads()}

    mask_rates, recomputed = {}, {}
    for steps in (int(s) for s in args.steps.split(",")):
        for cached, rates in ((True, mask_rates), (False, recomputed)):
            seconds = timed(
                lambda steps=steps, cached=cached: generate_images_mask(
                    model, vocab, captions, grid, steps=steps, guidance=args.guidance, generator=g,
                    use_cache=cached,
                ),
                args.repeats,
            )  # fmt: skip
            rates[steps] = args.batch / seconds
        print(
            f"mask  {steps:3d} steps: {mask_rates[steps]:8.2f} images/s   "
            f"recomputing the prompt: {recomputed[steps]:8.2f} images/s"
        )
    report["mask_images_per_s"] = mask_rates
    report["mask_images_per_s_recompute"] = recomputed
    at = 12 if 12 in mask_rates else max(mask_rates)
    report["mask_prompt_cache_speedup"] = mask_rates[at] / recomputed[at]

    ar = {}  # the same weights sampled in raster order: speed is all this measures
    for use_cache in (True, False):
        seconds = timed(
            lambda use_cache=use_cache: generate_images_ar(
                model, vocab, captions, grid, guidance=args.guidance, generator=g, use_cache=use_cache
            ),
            args.repeats,
        )
        ar["kv_cache" if use_cache else "recompute"] = args.batch / seconds
    print(f"ar    KV cache: {ar['kv_cache']:8.2f} images/s   recompute: {ar['recompute']:8.2f} images/s")
    report["ar_images_per_s"] = ar
    report["kv_cache_speedup"] = ar["kv_cache"] / ar["recompute"]

    # Captions: a caption prompt per image (random codes; the model decides when to stop).
    codes = torch.randint(
        0, vocab.codebook_size, (args.batch, grid), generator=torch.Generator().manual_seed(0)
    )
    prompts = [Grammar(vocab).prompt("caption", image=c.tolist()) for c in codes]
    rates = {}
    for name, groups in (("batched", [prompts]), ("one_at_a_time", [[p] for p in prompts])):
        texts = [t for group in groups for t in generate_text(model, vocab, group, max_new_tokens=32)]
        tokens = sum(len(t) + (len(t) < 32) for t in texts)  # + the <eos> that ended a caption
        seconds = timed(
            lambda groups=groups: [generate_text(model, vocab, group, max_new_tokens=32) for group in groups],
            args.repeats,
        )
        rates[name] = tokens / seconds
    print(f"caption tokens/s batched: {rates['batched']:8.1f}   one at a time: {rates['one_at_a_time']:8.1f}")
    report["caption_tokens_per_s"] = rates
    report["caption_batch_speedup"] = rates["batched"] / rates["one_at_a_time"]
    print(json.dumps(report))


if __name__ == "__main__":
    main()
