"""`omni sample` (sample.py): generate from a trained model folder in every direction: text-to-image, captions, VQA, text
and inpainting.

    python sample.py t2i --model runs/shapes/model "a red circle on the left" "a blue square above a green triangle"
    python sample.py caption --model runs/shapes/model samples/t2i/*.png
    python sample.py vqa --model runs/shapes/model img.png --question "what color is the circle?"
    python sample.py t2i --model runs/shapes/model "a red circle left of a blue square" --layout plan --show-boxes
    python sample.py caption --model runs/shapes/model img.png --grounded --show-boxes
    python sample.py ground --model runs/shapes/model img.png --phrase "red circle"
    python sample.py text --model runs/shapes/model "a green"
    python sample.py inpaint --model runs/shapes/model img.png --box 0 0 16 32 --prompt "a cyan square on the left"
    python sample.py chat --model runs/shapes/sft "draw a red circle on the left" --samples 4
    python sample.py interleave --model runs/shapes/model "a red" --samples 4

Each command writes into --out (default samples/<command>/): the images as numbered PNGs, a
grid.png of them, and results.json with the prompts, the settings and the outputs (chat and
interleave: also page.md, each sample's text and images in order). The folder is
written whole: it replaces an earlier sample.py output, and any other non-empty folder is
refused. Everything is
seeded: the same command gives the same files. Sampling settings left unset come from the model
folder's config.json (its `generation` section).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from omni.checks import check_number
from omni.data.images import draw_boxes, image_grid


def _number(kind, **rule):
    """An argparse type: `kind(text)` checked by omni.checks.check_number (finite, in range)."""

    def parse(text: str):
        try:
            return check_number("the value", kind(text), integer=kind is int, **rule)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e).removeprefix("the value ")) from e

    return parse


def _positive(kind):
    return _number(kind, above=0)


_non_negative_float = _number(float, at_least=0.0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="omni sample", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model", required=True, help="model folder written by train.py (config.json, ...)")
    common.add_argument("--out", help="output folder (default samples/<command>)")
    common.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    common.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    common.add_argument(
        "--compile",
        action="store_true",
        help="compile the sampling step (torch.compile): seconds to start, faster after; same outputs",
    )
    common.add_argument(
        "--scale",
        type=_number(int, at_least=1, at_most=32),
        default=4,
        help="upscaling of each tile in grid.png, 1 to 32 (default 4)",
    )
    images = argparse.ArgumentParser(add_help=False)
    images.add_argument(
        "--steps", type=_positive(int), help="mask-mode models: unmasking steps (default: the folder's)"
    )
    images.add_argument(
        "--guidance",
        type=_non_negative_float,
        help="classifier-free guidance scale; 0 turns it off (default: the folder's)",
    )
    images.add_argument(
        "--temperature",
        type=_non_negative_float,
        help="image-token sampling temperature (default: the folder's)",
    )
    text = argparse.ArgumentParser(add_help=False)
    text.add_argument(
        "--max-new-tokens", type=_positive(int), help="longest answer in tokens (default: the folder's)"
    )
    text.add_argument(
        "--temperature",
        type=_non_negative_float,
        help="text sampling temperature; 0 is greedy (default: the folder's)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("t2i", parents=[common, images], help="text -> images")
    p.add_argument("prompts", nargs="*", help="prompts (an empty string generates unconditionally)")
    p.add_argument("--prompts-file", help="a text file with one prompt per line, added to the prompts")
    p.add_argument("--per-prompt", type=_positive(int), default=1, help="images per prompt (default 1)")
    p.add_argument(
        "--batch-size", type=_positive(int), default=32, help="images generated at once (default 32)"
    )
    layout = p.add_mutually_exclusive_group()
    layout.add_argument(
        "--layout",
        choices=["plan"],
        help="plan: layout-first, the model writes each prompt's layout (names with boxes), then draws it "
        "(a grounded model); results.json records the layouts",
    )
    layout.add_argument(
        "--layout-file",
        help='a JSON file of layouts, one per prompt: [[{"name": "red circle", "box": [x0, y0, x1, y1]}, ...], '
        "...], boxes in pixels of the model's image resolution: draw these layouts",
    )
    p.add_argument("--show-boxes", action="store_true", help="draw the layouts' boxes on grid.png")

    p = sub.add_parser("caption", parents=[common, text], help="images -> captions")
    p.add_argument("images", nargs="+", help="image files (any mode or size)")
    p.add_argument(
        "--grounded",
        action="store_true",
        help="grounded captions: each object's name followed by its box (a grounded model); "
        "results.json records the boxes",
    )
    p.add_argument("--show-boxes", action="store_true", help="with --grounded: draw the boxes on grid.png")

    p = sub.add_parser("ground", parents=[common], help="images + phrases -> boxes (referring expressions)")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument(
        "--phrase",
        action="append",
        required=True,
        help='what to find, e.g. "red circle"; give it once for all images, or once per image in order',
    )

    p = sub.add_parser("vqa", parents=[common, text], help="images + questions -> answers")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument(
        "--grounded",
        action="store_true",
        help="the model finds the objects the question names (boxes) before it answers (a grounded model)",
    )
    p.add_argument("--show-boxes", action="store_true", help="with --grounded: draw the boxes on grid.png")
    p.add_argument(
        "--question",
        action="append",
        required=True,
        help="a question; give it once for all images, or once per image in order",
    )

    p = sub.add_parser("text", parents=[common, text], help="text -> its continuation")
    p.add_argument("prompts", nargs="+", help="text prompts")

    p = sub.add_parser("inpaint", parents=[common, images], help="regenerate a region of an image")
    p.add_argument("image", help="the image file")
    region = p.add_mutually_exclusive_group(required=True)
    region.add_argument(
        "--box",
        type=int,
        nargs=4,
        metavar=("X0", "Y0", "X1", "Y1"),
        help="region in pixels at the tokenizer's resolution (x1, y1 exclusive)",
    )
    region.add_argument(
        "--mask", help="a mask image at the tokenizer's resolution: non-black pixels are regenerated"
    )
    p.add_argument("--prompt", default="", help="what the whole image should show (default: unconditional)")
    p.add_argument(
        "--variants", type=_positive(int), default=4, help="fills to draw, one seed each (default 4)"
    )
    for command, about, parts in (
        ("chat", "one user turn in -> the assistant's reply: text, images or both (a model tuned on dialogues)",
         "the user's turn in parts, in order: text, or @FILE for an image"),
        ("interleave", "a document of text and images, continued in the order the model chooses",
         "the document's parts in order: text, or @FILE for an image"),
    ):  # fmt: skip
        p = sub.add_parser(command, parents=[common, images], help=about)
        p.add_argument("parts", nargs="+", help=parts)
        p.add_argument("--samples", type=_positive(int), default=1, help="replies, one seed each (default 1)")
        p.add_argument(
            "--max-new-tokens",
            type=_positive(int),
            help="longest reply in tokens, images included (default: all the room left)",
        )
        p.add_argument(
            "--text-temperature", type=_non_negative_float, help="0 is greedy (default: the folder's)"
        )
    return parser


def _prompts(args) -> list[str]:
    prompts = list(args.prompts)
    if args.prompts_file:
        path = Path(args.prompts_file)
        if not path.is_file():
            raise ValueError(f"--prompts-file {path} not found")
        prompts += [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not prompts:
        raise ValueError("give at least one prompt (or --prompts-file)")
    return prompts


def _check_files(paths) -> None:
    folders = [p for p in paths if Path(p).is_dir()]
    if folders:
        raise ValueError(f"{', '.join(folders)}: a folder, not an image file; give the image files")
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise ValueError(f"image file(s) not found: {', '.join(missing)}")


def run(args) -> dict:
    """Run one command; returns what results.json holds.

    --out is written whole: a previous sample.py output there is replaced, any other non-empty
    folder is refused (omni.release).
    """
    from omni import load_pretrained
    from omni.release import check_replaceable, writing_folder

    out = Path(args.out or f"samples/{args.command}")
    check_replaceable(out, "samples", what="--out")  # before the model loads: refuse early
    inputs = [
        *getattr(args, "images", []),
        *(part[1:] for part in getattr(args, "parts", []) if part.startswith("@")),
        *(p for p in (getattr(args, "image", None), getattr(args, "mask", None)) if p),
    ]
    inside = [p for p in inputs if out.resolve() in Path(p).resolve().parents]
    if inside:
        raise ValueError(
            f"--out {out} holds the input {inside[0]}, which its replacement would delete; write to another --out"
        )
    pipe = load_pretrained(args.model, device=args.device, compile=args.compile)
    with writing_folder(out, "samples", what="--out") as tmp:  # a run's outputs appear whole
        return _run(args, pipe, out, tmp)


def _run(args, pipe, out: Path, tmp: Path) -> dict:
    """The command's outputs, written into `tmp` (which then replaces `out`)."""
    settings = {k: v for k, v in vars(args).items() if k not in ("command", "prompts", "images", "out")}
    record = {
        "command": args.command,
        "model": str(args.model),
        "out": str(out),
        "settings": settings,
        "items": [],
    }
    grid_images = []
    start = time.perf_counter()

    if args.command == "t2i":
        prompts = [p for p in _prompts(args) for _ in range(args.per_prompt)]
        layouts = None
        if args.layout == "plan":
            layouts = pipe.plan(prompts, seed=args.seed)
        elif args.layout_file:
            layouts = [
                _layout(entry, n, args.layout_file)
                for n, entry in enumerate(_layouts(args.layout_file, prompts))
            ]
        images = pipe.generate_images(
            prompts,
            layout=layouts,
            steps=args.steps,
            guidance=args.guidance,
            temperature=args.temperature,
            seed=args.seed,
            batch_size=args.batch_size,
        )
        for i, (prompt, image) in enumerate(zip(prompts, images)):
            name = f"{i:04d}.png"
            image.save(tmp / name)
            item = {"prompt": prompt, "image": name}
            if layouts is not None:
                item["layout"] = _objects(layouts[i])
            record["items"].append(item)
        grid_images = images
        if layouts is not None and args.show_boxes:
            grid_images = [draw_boxes(im, _boxes(lay), args.scale) for im, lay in zip(images, layouts)]
            record["boxes_drawn"] = True
    elif args.command == "ground":
        _check_files(args.images)
        phrases = _per_image(args.phrase, args.images, "--phrase")
        boxes = pipe.ground(args.images, phrases, seed=args.seed)
        for image, phrase, box in zip(args.images, phrases, boxes):
            record["items"].append({"image": str(image), "phrase": phrase, "box": [round(v, 2) for v in box]})
        grid_images = [
            draw_boxes(pipe.preview(p), [(phrase, box)], args.scale)
            for p, phrase, box in zip(args.images, phrases, boxes)
        ]
        record["boxes_drawn"] = True
    elif args.command == "caption" and args.grounded:
        _check_files(args.images)
        options = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "seed": args.seed}
        grounded = pipe.grounded_caption(args.images, **options)
        for image, found in zip(args.images, grounded):
            record["items"].append({"image": str(image), "caption": found.text, "objects": _objects(found)})
        grid_images = [pipe.preview(p) for p in args.images]
        if args.show_boxes:
            grid_images = [
                draw_boxes(im, found.boxes, args.scale) for im, found in zip(grid_images, grounded)
            ]
            record["boxes_drawn"] = True
    elif args.command in ("caption", "vqa"):
        _check_files(args.images)
        options = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "seed": args.seed}
        if args.command == "caption":
            texts = pipe.caption(args.images, **options)
            questions = [None] * len(args.images)
        elif args.grounded:
            questions = _per_image(args.question, args.images, "--question")
            found = pipe.answer(args.images, questions, grounded=True, **options)
            texts = [f.text for f in found]
        else:
            questions = _per_image(args.question, args.images, "--question")
            texts = pipe.answer(args.images, questions, **options)
        for n, (image, question, text) in enumerate(zip(args.images, questions, texts)):
            item = {"image": str(image), "question": question, "answer": text}
            if question is None:
                item = {"image": str(image), "caption": text}
            elif args.grounded:
                item["objects"] = _objects(found[n])
            record["items"].append(item)
        grid_images = [pipe.preview(p) for p in args.images]
        if args.command == "vqa" and args.grounded and args.show_boxes:
            grid_images = [draw_boxes(im, f.boxes, args.scale) for im, f in zip(grid_images, found)]
            record["boxes_drawn"] = True
    elif args.command == "text":
        texts = pipe.generate_text(
            args.prompts, max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed
        )
        record["items"] = [{"prompt": p, "continuation": t} for p, t in zip(args.prompts, texts)]
    elif args.command == "inpaint":
        _check_files([args.image] + ([args.mask] if args.mask else []))
        region = tuple(args.box) if args.box else pipe.read_mask(args.mask)
        source = pipe.preview(args.image)
        source.save(tmp / "source.png")
        grid_images = [source]
        for v in range(args.variants):
            image = pipe.inpaint(
                args.image,
                region,
                args.prompt,
                steps=args.steps,
                guidance=args.guidance,
                temperature=args.temperature,
                seed=args.seed + v,
            )
            name = f"{v:04d}.png"
            image.save(tmp / name)
            record["items"].append({"prompt": args.prompt, "seed": args.seed + v, "image": name})
            grid_images.append(image)
    elif args.command in ("chat", "interleave"):
        grid_images = _interleave(args, pipe, tmp, record)

    record["seconds"] = round(time.perf_counter() - start, 3)
    if grid_images:
        # Images with boxes drawn on them are upscaled already (draw_boxes), the others here.
        scale = 1 if record.pop("boxes_drawn", False) else args.scale
        image_grid(grid_images, columns=8, scale=scale).save(tmp / "grid.png")
        record["grid"] = "grid.png"
    (tmp / "results.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def _per_image(values: list[str], images: list[str], flag: str) -> list[str]:
    """One value for all images, or one per image in order."""
    if len(values) == 1:
        return values * len(images)
    if len(values) != len(images):
        raise ValueError(
            f"{len(images)} images but {len(values)} {flag}; give one {flag} for all images or one per image"
        )
    return values


def _layouts(path: str, prompts: list[str]) -> list:
    """The layouts of --layout-file, one per prompt."""
    try:
        layouts = json.loads(Path(path).read_text())
    except OSError as e:
        raise ValueError(f"--layout-file {path} cannot be read: {e}") from e
    except ValueError as e:
        raise ValueError(f"--layout-file {path} is not JSON: {e}") from e
    if not isinstance(layouts, list) or len(layouts) != len(prompts):
        raise ValueError(
            f"--layout-file {path} must hold a list of {len(prompts)} layouts (one per prompt, --per-prompt "
            f'included), each a list of {{"name", "box"}}'
        )
    return layouts


def _layout(entry, n: int, path: str) -> list:
    """One layout of --layout-file as (name, box) pairs."""
    from omni.data.objects import read_objects

    try:
        objects, _ = read_objects({"objects": entry})
    except ValueError as e:
        raise ValueError(f"--layout-file {path}, layout {n}: {e}") from e
    return objects


def _boxes(layout) -> list:
    return layout.boxes if hasattr(layout, "boxes") else list(layout)


def _objects(layout) -> list[dict]:
    """A layout or grounded caption's boxes as results.json records them."""
    return [{"name": name, "box": [round(v, 2) for v in box]} for name, box in _boxes(layout)]


def _interleave(args, pipe, tmp: Path, record: dict) -> list:
    """`chat` / `interleave`: each sample's parts as items, its images as PNGs, page.md showing them
    in order."""
    images = [part[1:] for part in args.parts if part.startswith("@")]
    _check_files(images)
    prompt = [pipe.preview(part[1:]) if part.startswith("@") else part for part in args.parts]
    page = ["# " + " ".join(p if isinstance(p, str) else "[image]" for p in prompt), ""]
    shown = [p for p in prompt if not isinstance(p, str)]
    for n in range(args.samples):
        options = dict(
            max_new_tokens=args.max_new_tokens, text_temperature=args.text_temperature, steps=args.steps,
            guidance=args.guidance, temperature=args.temperature, seed=args.seed + n,
        )  # fmt: skip
        if args.command == "chat":
            (parts,) = pipe.chat([[("user", prompt)]], **options)
        else:
            (parts,) = pipe.generate([prompt], **options)
        page += [f"## Sample {n} (seed {args.seed + n})", ""]
        written = []
        for k, part in enumerate(parts):
            if isinstance(part, str):
                written.append({"text": part})
                page += [part, ""]
            else:
                name = f"{n:04d}-{k:02d}.png"
                part.save(tmp / name)
                written.append({"image": name})
                page += [f"![part {k}]({name})", ""]
                shown.append(part)
        if not parts:
            page += ["(nothing: the model ended at once)", ""]
        record["items"].append({"seed": args.seed + n, "parts": written})
    (tmp / "page.md").write_text("\n".join(page))
    record["page"] = "page.md"
    return shown


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    args = build_parser().parse_args(argv)
    record = run(args)
    for item in record["items"]:
        print(json.dumps(item))
    print(
        f"wrote {len(record['items'])} result(s) to {record['out']}/results.json in {record['seconds']:.1f} s"
    )
    return 0
