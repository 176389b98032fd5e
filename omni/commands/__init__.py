"""The `omni` command (installed with the package; also `python -m omni`): every command line.

    omni train fit --config configs/shapes/model.yaml        train the unified model
    omni sample t2i --model runs/shapes/model "a red circle"  generate (t2i, caption, vqa, text, inpaint)
    omni tokenizer train-vq fit --config configs/shapes/vq.yaml
    omni tokenizer eval | train-text | encode ...             the tokenizer workflow
    omni data from-folder PHOTOS/ --out data/mine            your images + captions -> shards
    omni shapes make | dialogues | benchmark ...              the shapes world
    omni convert from-hf | to-hf ...                          Hugging Face Llama folders in and out
    omni convert from-llamagen-vq ...                         LlamaGen's VQ tokenizers in
    omni demo                                                 the whole shapes pipeline

Each command is a module with `main(argv)`; the checkout's entry files (train.py, sample.py,
tokenizers/*.py) run the same functions. Every command reports an input error the same way
(`omni.errors.run_command`): `error: MESSAGE` on stderr and exit status 2.
"""

from __future__ import annotations

import importlib
import sys

from omni.errors import run_command

# Command words -> (module whose main(argv) runs it, one-line help).
COMMANDS: dict[tuple[str, ...], tuple[str, str]] = {
    ("train",): ("omni.commands.train", "train the unified model (Lightning: fit, validate; --help)"),
    ("sample",): ("omni.commands.sample", "generate from a model folder: t2i, caption, vqa, text, inpaint"),
    ("tokenizer", "train-vq"): ("omni.commands.train_vq", "train the VQ image tokenizer (Lightning: fit)"),
    ("tokenizer", "eval"): ("omni.commands.eval_vq", "PSNR, SSIM, codebook use of a VQ folder on shards"),
    ("tokenizer", "train-text"): ("omni.commands.train_text", "train the text BPE on shards or text files"),
    ("tokenizer", "encode"): ("omni.commands.encode_shards", "image shards -> code shards with a VQ"),
    ("data", "from-folder"): (
        "omni.data.from_folder",
        "a folder (or CSV/JSONL) of images + captions -> shards",
    ),
    ("shapes", "make"): ("omni.shapes.render", "render the shapes dataset as image shards"),
    ("shapes", "dialogues"): (
        "omni.shapes.dialogues",
        "write shapes conversations (draw, answer, edit) as dialogue shards",
    ),
    ("shapes", "benchmark"): (
        "omni.shapes.benchmark",
        "score a model folder (or ground truth) with the analyzer",
    ),
    ("convert", "from-hf"): (
        "omni.commands.convert_from_hf",
        "a Hugging Face Llama-family folder -> an Omni model folder",
    ),
    ("convert", "to-hf"): (
        "omni.commands.convert_to_hf",
        "an Omni model folder -> a Hugging Face LlamaForCausalLM folder",
    ),
    ("convert", "from-llamagen-vq"): (
        "omni.commands.convert_from_llamagen_vq",
        "a LlamaGen VQ checkpoint (.pt) -> an Omni VQ folder",
    ),
    ("demo",): ("omni.shapes.demo", "the end-to-end shapes demo that make demo runs"),
}


def usage() -> str:
    lines = ["usage: omni COMMAND [ARGS...]   (omni COMMAND --help for its options)", "", "commands:"]
    lines += [f"  {' '.join(words):<22} {about}" for words, (_, about) in COMMANDS.items()]
    return "\n".join(lines)


def find(argv: list[str]) -> tuple[tuple[str, ...], list[str]] | None:
    """The command the leading words of `argv` name, and the rest of `argv`; None when none does."""
    for words in sorted(COMMANDS, key=len, reverse=True):
        if tuple(argv[: len(words)]) == words:
            return words, argv[len(words) :]
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    found = find(argv)
    if found is None:
        group = [words[1] for words in COMMANDS if len(words) > 1 and words[0] == argv[0]]
        problem = (
            f"omni {argv[0]} takes a subcommand: {', '.join(group)}"
            if group and len(argv) == 1
            else f"unknown command {' '.join(argv[:2])!r}"
        )
        print(f"{usage()}\n\nerror: {problem}", file=sys.stderr)
        return 2
    words, rest = found
    module = importlib.import_module(COMMANDS[words][0])
    return run_command(module.main, rest)
