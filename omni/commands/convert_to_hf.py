"""`omni convert to-hf`: an Omni model folder -> a Hugging Face LlamaForCausalLM folder (transformers, vLLM).

    omni convert to-hf --src runs/text-model --out runs/text-model-hf

For serving text and raster (ar) image generation: the folder holds config.json,
model.safetensors, a tokenizer.json with Omni's special tokens and one <|image_N|> token per VQ
code (at Omni's ids), and vq/ to decode generated codes (omni.tokenizers.load_vq). A causal HF
model reads images causally, not bidirectionally as Omni does, so captions and VQA stay Omni's.
Models a causal Llama cannot express (mask mode, image tables, 2-D rotary, QK-norm, an
understanding encoder) are refused with the reason.
"""

import argparse

from omni.convert import to_hf


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="omni convert to-hf", description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", required=True, help="Omni model folder (omni.load_pretrained reads it)")
    parser.add_argument("--out", required=True, help="the Hugging Face folder to write (written whole)")
    args = parser.parse_args(argv)
    out = to_hf(args.src, args.out)
    print(f"wrote {out} (transformers: LlamaForCausalLM.from_pretrained; decode image codes with {out}/vq)")
    return 0
