"""Sampling throughput, each optimised sampler beside the same sampler with its optimisations
switched off, measured in one run (the two alternate, best of `--repeats` kept):

* ar images/s: KV cache + compiled static-shape step (`ar_images_per_s`) vs the eager KV-cached
  step (`ar_images_per_s_eager`); the cache-less recomputation for reference;
* mask images/s at 12 steps: prompt cached once + compiled step (`mask_images_per_s`) vs
  recomputing the whole sequence eagerly at every step (`mask_images_per_s_eager`); the prompt
  cache alone, and other step counts, for reference;
* caption tokens/s, batched: compiled (`caption_tokens_per_s`) vs eager (`caption_tokens_per_s_eager`).

    python bench/sample_throughput.py                               # runs/shapes/model if present
    python bench/sample_throughput.py --model runs/shapes/model --batch 32 --steps 4,8,12,16
    python bench/sample_throughput.py --random                      # shapes-sized random weights

Speed does not depend on what the weights learned, except through caption lengths (a trained
model stops at <eos> where a random one may ramble), so without a model folder the benchmark
uses random weights of the shapes model's size. The ar timing runs the same weights as an ar
model: both modes have the same architecture. Text-to-image uses classifier-free guidance
(a doubled batch) as the pipeline does. The compiled samplers' first calls (compilation) are
timed apart (`compile_seconds`), and their outputs checked equal to the eager ones
(`outputs_identical`). Prints one JSON object last.
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


def best_times(fns: dict, repeats: int) -> dict:
    """Best seconds of each of `fns` over `repeats` rounds, the functions alternating within a
    round (so a slow spell of the machine hits them alike), after one untimed call each."""
    for fn in fns.values():
        fn()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def first_call(fn) -> tuple[float, object]:
    """(seconds, result) of one call: for a compiled sampler, mostly compilation."""
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", default="runs/shapes/model", help="model folder (default runs/shapes/model)"
    )
    parser.add_argument("--random", action="store_true", help="random shapes-sized weights, ignore --model")
    parser.add_argument("--batch", type=int, default=16, help="images / captions per batch (default 16)")
    parser.add_argument("--steps", default="12", help="mask-mode step counts to time (12 is the headline)")
    parser.add_argument("--guidance", type=float, default=2.0, help="CFG scale for image generation")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds per figure (best is kept)")
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
    device = model.output.weight.device
    print(
        f"model: {source}; {model.num_params() / 1e6:.2f} M parameters; batch {args.batch}; "
        f"{grid} codes per image; {device}"
    )
    report: dict = {"model": source, "batch": args.batch, "threads": torch.get_num_threads()}
    compile_seconds, identical = {}, {}

    def seeded():  # the same draws for every variant: their outputs can be compared
        return seeded_generator(0, device)

    # Raster (ar): the same weights sampled in raster order; speed is all this measures.
    def ar(**options):
        return lambda: generate_images_ar(
            model, vocab, captions, grid, guidance=args.guidance, generator=seeded(), **options
        )

    compile_seconds["ar"], codes = first_call(ar(compile=True))
    identical["ar"] = torch.equal(codes, ar()())
    t = best_times(
        {"compiled": ar(compile=True), "eager": ar(), "recompute": ar(use_cache=False)}, args.repeats
    )
    report["ar_images_per_s"] = args.batch / t["compiled"]
    report["ar_images_per_s_eager"] = args.batch / t["eager"]
    report["ar_images_per_s_recompute"] = args.batch / t["recompute"]
    report["ar_speedup"] = t["eager"] / t["compiled"]
    print(
        f"ar    compiled {report['ar_images_per_s']:8.2f} images/s   eager {report['ar_images_per_s_eager']:8.2f}"
        f"   recomputing {report['ar_images_per_s_recompute']:8.2f}   ({report['ar_speedup']:.2f}x)"
    )

    # Mask mode: optimised = the prompt cached once + the compiled step; eager = recompute all.
    def mask(steps, **options):
        return lambda: generate_images_mask(
            model, vocab, captions, grid, steps=steps, guidance=args.guidance, generator=seeded(),
            **options,
        )  # fmt: skip

    by_steps = {}
    for steps in (int(s) for s in args.steps.split(",")):
        if not compile_seconds.get("mask"):
            compile_seconds["mask"], codes = first_call(mask(steps, compile=True))
            identical["mask"] = torch.equal(codes, mask(steps, use_cache=False)())
        t = best_times(
            {
                "compiled": mask(steps, compile=True),
                "cache": mask(steps),
                "eager": mask(steps, use_cache=False),
            },
            args.repeats,
        )
        by_steps[steps] = {name: args.batch / seconds for name, seconds in t.items()}
        print(
            f"mask  {steps:3d} steps: compiled + prompt cache {by_steps[steps]['compiled']:8.2f} images/s   "
            f"prompt cache {by_steps[steps]['cache']:8.2f}   eager (recompute) {by_steps[steps]['eager']:8.2f}"
        )
    at = 12 if 12 in by_steps else max(by_steps)
    report["mask_steps"] = at
    report["mask_images_per_s"] = by_steps[at]["compiled"]
    report["mask_images_per_s_eager"] = by_steps[at]["eager"]
    report["mask_images_per_s_prompt_cache_only"] = by_steps[at]["cache"]
    report["mask_speedup"] = by_steps[at]["compiled"] / by_steps[at]["eager"]
    report["mask_images_per_s_by_steps"] = {k: v["compiled"] for k, v in by_steps.items()}

    # Captions: a caption prompt per image (random codes; the model decides when to stop).
    codes = torch.randint(
        0, vocab.codebook_size, (args.batch, grid), generator=torch.Generator().manual_seed(0)
    )
    prompts = [Grammar(vocab).prompt("caption", image=c.tolist()) for c in codes]

    def caption(groups, **options):
        return lambda: [generate_text(model, vocab, g, max_new_tokens=32, **options) for g in groups]

    compile_seconds["caption"], texts = first_call(caption([prompts], compile=True))
    identical["caption"] = texts == caption([prompts])()
    tokens = sum(len(t) + (len(t) < 32) for t in texts[0])  # + the <eos> that ended a caption
    t = best_times(
        {
            "compiled": caption([prompts], compile=True),
            "eager": caption([prompts]),
            "one_at_a_time": caption([[p] for p in prompts]),
        },
        args.repeats,
    )
    report["caption_tokens_per_s"] = tokens / t["compiled"]
    report["caption_tokens_per_s_eager"] = tokens / t["eager"]
    report["caption_tokens_per_s_one_at_a_time"] = tokens / t["one_at_a_time"]
    report["caption_speedup"] = t["eager"] / t["compiled"]
    print(
        f"caption tokens/s compiled {report['caption_tokens_per_s']:8.1f}   eager "
        f"{report['caption_tokens_per_s_eager']:8.1f}   eager one at a time "
        f"{report['caption_tokens_per_s_one_at_a_time']:8.1f}   ({report['caption_speedup']:.2f}x)"
    )
    report["compile_seconds"] = compile_seconds
    report["outputs_identical"] = identical
    print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in report.items()}))


if __name__ == "__main__":
    main()
