"""`omni convert from-hf`: a Hugging Face Llama-family model folder -> an Omni model folder.

    omni convert from-hf --src SmolLM-135M/ --vq runs/shapes/vq --out runs/smol-omni

The HF folder needs config.json, model.safetensors (or its sharded index) and tokenizer.json;
the Omni folder keeps the HF tokenizer, appends Omni's special tokens and the VQ's codes to the
vocabulary (their rows start as the mean of the text rows) and loads with omni.load_pretrained.
Configs Omni cannot express (rope scaling, biases, other architectures) are refused, naming the
field (omni/convert/hf.py).
"""

import argparse

from omni.convert import from_hf
from omni.model import GENERATION_MODES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="omni convert from-hf", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--src", required=True, help="Hugging Face model folder (config.json, safetensors, tokenizer.json)"
    )
    parser.add_argument("--vq", required=True, help="VQ folder whose codes the model will read and write")
    parser.add_argument("--out", required=True, help="the Omni model folder to write (written whole)")
    parser.add_argument(
        "--image-generation",
        choices=GENERATION_MODES,
        default="ar",
        help="how the model will generate images",
    )
    args = parser.parse_args(argv)
    out = from_hf(args.src, args.out, vq=args.vq, image_generation=args.image_generation)
    print(f"wrote {out} (load it with omni.load_pretrained; train from it with train.py)")
    return 0
