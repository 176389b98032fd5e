"""The shapes benchmark of a trained model folder: generation, captioning and VQA, scored exactly.

    omni shapes benchmark --model runs/shapes/model --n 500      # a model folder
    omni shapes benchmark --shards 'data/shapes/val-*.tar'    # the analyzer on ground truth

Prompts, images and questions come from the validation shards (KEY.png, KEY.txt, KEY.json
with "scene" and "qa"). The analyzer in `omni.shapes.analyzer` is the judge:

* text-to-image: the image generated from a sample's caption must show exactly its scene;
* captioning: the greedy caption of the sample's image must describe exactly its scene;
* VQA: every question of the sample, answered greedily, must match the expected answer;
* dialogue (`--tasks dialogue`, on `omni shapes dialogues` shards): every assistant turn of a
  conversation, replayed with `pipe.chat` (`benchmark_dialogues`): draws when asked, never
  otherwise, and what it draws, edits and answers is right.

Each figure is split by one-object / two-object scenes and, where the shards flag held-out
samples (`omni shapes make --holdout`: attribute combinations kept out of training), into
`*_heldout` (those samples) and `*_seen` (the rest); speeds are images/s and captions/s of the
batched samplers on this machine.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from PIL import Image

from omni.grounding import Grounded, iou
from omni.progress import progress as progress_counter
from omni.shapes.analyzer import check_answer, evaluate_shards, find_objects, match_scene, score_caption
from omni.shapes.scenes import COLORS, SHAPES, Scene, ShapeObject, question_kind


def validation_samples(pattern: str, n: int) -> list[dict]:
    """The first `n` samples of shapes shards: {"key", "image", "caption", "scene", "qa"}."""
    from omni.data.shards import iterate_samples

    out = []
    for sample in iterate_samples(pattern):
        if len(out) >= n:
            break
        if "json" not in sample or "png" not in sample or "txt" not in sample:
            continue  # not a shapes sample (code shards have no png)
        meta = json.loads(sample["json"])
        out.append(
            {
                "key": sample["__key__"],
                "image": Image.open(io.BytesIO(sample["png"])).convert("RGB"),
                "caption": sample["txt"].decode().strip(),
                "scene": Scene.from_dict(meta["scene"]),
                "qa": meta.get("qa", []),
                "heldout": bool(meta.get("heldout", False)),
            }
        )
    if not out:
        raise ValueError(
            f"no shapes samples (KEY.png + KEY.txt + KEY.json) in {pattern!r}; "
            "point --shards at the image shards, e.g. 'data/shapes/val-*.tar'"
        )
    return out


def _batches(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _split(hits: list[bool], samples: list[dict], prefix: str) -> dict:
    """Accuracy overall, by object count and, where some samples are held out, held out vs seen."""

    def accuracy(keep) -> float | None:
        sel = [h for h, s in zip(hits, samples) if keep(s)]
        return sum(sel) / len(sel) if sel else None

    report = {f"{prefix}": sum(hits) / max(len(hits), 1)}
    for name, count in (("one", 1), ("two", 2)):
        report[f"{prefix}_{name}"] = accuracy(lambda s, count=count: len(s["scene"].objects) == count)
    if any(s["heldout"] for s in samples):
        report[f"{prefix}_heldout"] = accuracy(lambda s: s["heldout"])
        report[f"{prefix}_seen"] = accuracy(lambda s: not s["heldout"])
        report[f"{prefix}_heldout_n"] = sum(s["heldout"] for s in samples)
    return report


def failure_counts(reasons: list[str]) -> dict[str, int]:
    """How many failures of each kind: the analyzer's reason up to its colon ("relation", "objects")."""
    return dict(Counter(reason.split(":")[0] for reason in reasons if reason).most_common())


def by_question_kind(hits: list[bool], questions: list[str]) -> dict[str, float]:
    """VQA accuracy per question template (`omni.shapes.scenes.question_kind`)."""
    kinds: dict[str, list[bool]] = {}
    for hit, question in zip(hits, questions):
        kinds.setdefault(question_kind(question), []).append(hit)
    return {kind: sum(h) / len(h) for kind, h in sorted(kinds.items())}


def benchmark_model(
    pipe,
    shards: str,
    n: int = 500,
    *,
    batch_size: int = 64,
    seed: int = 0,
    tasks: tuple[str, ...] = ("t2i", "caption", "vqa"),
    examples: int = 8,
    progress: bool = True,
) -> dict:
    """Score an `OmniPipeline` on the first `n` validation samples; returns the report dict.

    `examples` failures and successes of each task are kept in the report for reading, with
    the count of each kind of failure (`t2i_failures`, `caption_failures`: wrong objects, wrong
    relation, ...) and VQA's accuracy per kind of question (`vqa_by_question`).
    """
    samples = validation_samples(shards, n)
    report: dict = {"n": len(samples), "shards": shards, "settings": dict(pipe.generation)}
    shown: dict[str, list] = {}

    def bar(total, desc):
        return progress_counter(total, desc, "sample", enabled=progress)

    if "t2i" in tasks:
        hits, seconds, reasons = [], 0.0, []
        with bar(len(samples), "text-to-image") as b:
            for i, chunk in enumerate(_batches(samples, batch_size)):
                start = time.perf_counter()
                images = pipe.generate_images([s["caption"] for s in chunk], seed=seed + i)
                seconds += time.perf_counter() - start
                for s, image in zip(chunk, images):
                    result = match_scene(s["scene"], find_objects(image))
                    hits.append(bool(result))
                    reasons.append(result.reason)
                    if len(shown.setdefault("t2i", [])) < examples:
                        shown["t2i"].append(
                            {"prompt": s["caption"], "ok": bool(result), "why": result.reason}
                        )
                b.update(len(chunk))
        report |= _split(hits, samples, "t2i_accuracy")
        report["t2i_failures"] = failure_counts(reasons)
        report["images_per_second"] = len(samples) / seconds

    if "caption" in tasks:
        hits, seconds, reasons = [], 0.0, []
        with bar(len(samples), "captioning") as b:
            for chunk in _batches(samples, batch_size):
                start = time.perf_counter()
                texts = pipe.caption([s["image"] for s in chunk])
                seconds += time.perf_counter() - start
                for s, text in zip(chunk, texts):
                    result = score_caption(s["scene"], text)
                    hits.append(bool(result))
                    reasons.append(result.reason)
                    if len(shown.setdefault("caption", [])) < examples:
                        shown["caption"].append({"truth": s["caption"], "caption": text, "ok": bool(result)})
                b.update(len(chunk))
        report |= _split(hits, samples, "caption_accuracy")
        report["caption_failures"] = failure_counts(reasons)
        report["captions_per_second"] = len(samples) / seconds

    if "vqa" in tasks:
        pairs = [(s, qa) for s in samples for qa in s["qa"]]
        hits = []
        with bar(len(pairs), "VQA") as b:
            for chunk in _batches(pairs, batch_size):
                answers = pipe.answer([s["image"] for s, _ in chunk], [qa["question"] for _, qa in chunk])
                for (_, qa), answer in zip(chunk, answers):
                    ok = check_answer(answer, qa["answer"])
                    hits.append(ok)
                    if len(shown.setdefault("vqa", [])) < examples:
                        shown["vqa"].append(
                            {"question": qa["question"], "expected": qa["answer"], "answer": answer, "ok": ok}
                        )
                b.update(len(chunk))
        report |= _split(hits, [s for s, _ in pairs], "vqa_accuracy")
        report["vqa_by_question"] = by_question_kind(hits, [qa["question"] for _, qa in pairs])
        report["vqa_questions"] = len(pairs)

    if "gvqa" in tasks:
        pairs = [(s, qa) for s in samples for qa in s["qa"]]
        hits = []
        with bar(len(pairs), "grounded VQA") as b:
            for chunk in _batches(pairs, batch_size):
                found = pipe.answer(
                    [s["image"] for s, _ in chunk], [qa["question"] for _, qa in chunk], grounded=True
                )
                for (_, qa), answer in zip(chunk, found):
                    hits.append(check_answer(answer.text, qa["answer"]))
                    if len(shown.setdefault("gvqa", [])) < examples:
                        shown["gvqa"].append(
                            {"question": qa["question"], "expected": qa["answer"], "answer": answer.text,
                             "objects": answer.to_dict()["objects"], "ok": hits[-1]}
                        )  # fmt: skip
                b.update(len(chunk))
        report |= _split(hits, [s for s, _ in pairs], "vqa_grounded_accuracy")
        report["vqa_grounded_by_question"] = by_question_kind(hits, [qa["question"] for _, qa in pairs])

    if "plan" in tasks:
        hits, plans, plan_reasons, reasons = [], [], [], []
        with bar(len(samples), "layout-first text-to-image") as b:
            for i, chunk in enumerate(_batches(samples, batch_size)):
                layouts = pipe.plan([s["caption"] for s in chunk], seed=seed + i)
                images = pipe.generate_images([s["caption"] for s in chunk], layout=layouts, seed=seed + i)
                for s, layout, image in zip(chunk, layouts, images):
                    planned = match_scene(s["scene"], layout_objects(layout, pipe.frame))
                    result = match_scene(s["scene"], find_objects(image))
                    plans.append(bool(planned))
                    plan_reasons.append(planned.reason)
                    hits.append(bool(result))
                    reasons.append(result.reason)
                    if len(shown.setdefault("plan", [])) < examples:
                        shown["plan"].append(
                            {"prompt": s["caption"], "layout": layout.to_dict(), "plan_ok": bool(planned),
                             "ok": bool(result), "why": result.reason or planned.reason}
                        )  # fmt: skip
                b.update(len(chunk))
        report |= _split(hits, samples, "t2i_plan_accuracy")
        report |= _split(plans, samples, "plan_accuracy")
        report["t2i_plan_failures"] = failure_counts(reasons)
        report["plan_failures"] = failure_counts(plan_reasons)

    if "ground" in tasks:
        cases = [(s, o) for s in samples for o in s["scene"].objects if _unique_name(o, s["scene"])]
        ious = []
        with bar(len(cases), "grounding") as b:
            for chunk in _batches(cases, batch_size):
                boxes = pipe.ground([s["image"] for s, _ in chunk], [o.name for _, o in chunk], seed=seed)
                for (s, o), box in zip(chunk, boxes):
                    truth = object_box(o, s["image"].width)
                    ious.append(iou(box, truth))
                    if len(shown.setdefault("ground", [])) < examples:
                        shown["ground"].append(
                            {
                                "phrase": o.name,
                                "box": [round(v, 1) for v in box],
                                "truth": truth,
                                "iou": ious[-1],
                            }
                        )
                b.update(len(chunk))
        report |= _split([v >= 0.5 for v in ious], [s for s, _ in cases], "grounding_accuracy")
        report["grounding_iou"] = sum(ious) / max(len(ious), 1)
        report["grounding_cases"] = len(cases)

    report["examples"] = shown
    return report


def _unique_name(obj: ShapeObject, scene: Scene) -> bool:
    return sum(o.name == obj.name for o in scene.objects) == 1


def object_box(obj: ShapeObject, side: int) -> tuple[float, float, float, float]:
    """A scene object's box (x0, y0, x1, y1) in pixels of an image of `side` pixels."""
    h = obj.size / 2
    return ((obj.x - h) * side, (obj.y - h) * side, (obj.x + h) * side, (obj.y + h) * side)


def layout_objects(layout: Grounded, frame: tuple[int, int]) -> list[ShapeObject]:
    """A planned layout's objects as the analyzer's: the shapes name in each phrase, placed at its
    box (a phrase that names no shapes object becomes an "unknown" one, which never matches)."""
    out = []
    for phrase, (x0, y0, x1, y1) in layout.boxes:
        words = phrase.lower().split()
        color = next((w for w in words if w in COLORS), "unknown")
        shape = next((w for w in words if w in SHAPES), "unknown")
        w, h = frame
        out.append(ShapeObject(color, shape, x=(x0 + x1) / 2 / w, y=(y0 + y1) / 2 / h, size=(x1 - x0) / w))
    return out


def validation_dialogues(pattern: str, n: int) -> list[dict]:
    """The first `n` dialogues of shapes dialogue shards (`omni shapes dialogues`): their
    conversation, scenes, scored turns and images."""
    from omni.data.dialogue import image_entries, parse_conversation
    from omni.data.shards import iterate_samples

    out = []
    for sample in iterate_samples(pattern):
        if len(out) >= n:
            break
        meta = json.loads(sample["json"]) if "json" in sample else {}
        if "conversations" not in meta or "turns" not in meta:
            continue  # not a shapes dialogue (code shards hold no pngs of their own kind)
        images = [Image.open(io.BytesIO(sample[e])).convert("RGB") for e in image_entries(sample)]
        out.append(
            {
                "key": sample["__key__"],
                "turns": parse_conversation(meta, len(images)),
                "scored": meta["turns"],
                "scenes": [Scene.from_dict(d) for d in meta["scenes"]],
                "images": images,
            }
        )
    if not out:
        raise ValueError(
            f"no shapes dialogues in {pattern!r}; write them with `omni shapes dialogues --out DIR` and point "
            "--dialogues at DIR/val-*.tar (the image shards, not the code shards)"
        )
    return out


def benchmark_dialogues(
    pipe, shards: str, n: int = 200, *, batch_size: int = 64, seed: int = 0, examples: int = 8
) -> dict:
    """Replay each dialogue's assistant turns with `pipe.chat` (the history up to each user turn
    is the reference's, so every turn is scored on its own) and score them: draws when asked
    (draw and edit turns that hold an image), draws unasked (answer and describe turns that hold
    one: should be 0), draw / edit / answer / describe accuracy (`score_image`, `score_edit`,
    `check_answer`, `score_caption` on the first image or on the text), and answers after the
    first turn (multi-turn)."""
    from omni.shapes.analyzer import score_edit, score_image

    cases = []
    for d in validation_dialogues(shards, n):
        history, asked = [], 0
        for role, parts in d["turns"]:
            content = [p if kind == "text" else d["images"][p] for kind, p in parts]
            if role == "assistant":
                cases.append((d, list(history), d["scored"][asked], asked))
                asked += 1
            history.append((role, content))
    hits: dict[str, list[bool]] = {k: [] for k in ("draw", "edit", "answer", "answer_later", "describe")}
    drew_when_asked, drew_unasked, shown = [], [], []
    for i, chunk in enumerate(_batches(cases, batch_size)):
        replies = pipe.chat([history for _, history, _, _ in chunk], seed=seed + i)
        for (d, _, turn, index), reply in zip(chunk, replies):
            images = [p for p in reply if not isinstance(p, str)]
            text = " ".join(p for p in reply if isinstance(p, str))
            kind = turn["kind"]
            if kind in ("draw", "edit"):
                drew_when_asked.append(bool(images))
                after = d["scenes"][turn["image"]]
                if not images:
                    ok = False
                elif kind == "draw":
                    ok = bool(score_image(after, images[0]))
                else:
                    ok = bool(score_edit(d["scenes"][turn["before"]], after, images[0]))
            else:
                drew_unasked.append(bool(images))
                if kind == "answer":
                    ok = not images and check_answer(text, turn["answer"])
                    if index > 0:
                        hits["answer_later"].append(ok)
                else:
                    ok = not images and bool(score_caption(d["scenes"][turn["image"]], text))
            hits[kind].append(ok)
            if len(shown) < examples:
                shown.append(
                    {
                        "key": d["key"],
                        "turn": index,
                        "kind": kind,
                        "reply": text,
                        "images": len(images),
                        "ok": ok,
                    }
                )

    def rate(values: list[bool]) -> float | None:
        return sum(values) / len(values) if values else None

    report = {f"dialogue_{k}_accuracy": rate(v) for k, v in hits.items()}
    report |= {
        "dialogue_draws_when_asked": rate(drew_when_asked),
        "dialogue_draws_unasked": rate(drew_unasked),
        "dialogue_turns": len(cases),
        "dialogue_examples": shown,
    }
    return report


BASE_TASKS = ("t2i", "caption", "vqa")
GROUNDED_TASKS = ("plan", "ground", "gvqa")  # a grounded model's (omni.vocab: location tokens)
ALL_TASKS = (*BASE_TASKS, *GROUNDED_TASKS, "dialogue")


def default_tasks(pipe) -> tuple[str, ...]:
    """What a model is benchmarked on by default: t2i, caption, vqa, and plan and ground when it
    was trained with grounding."""
    return BASE_TASKS + (GROUNDED_TASKS if pipe.vocab.location_bins else ())


@torch.no_grad()
def run(
    model: str, shards: str, n: int, device: str = "cpu", generation: dict | None = None, **options
) -> dict:
    """Load a model folder and benchmark it; `generation` overrides its sampling defaults
    (`guidance_scale`, `temperature`, `mask_steps`, ...)."""
    from omni import load_pretrained
    from omni.generate import check_generation

    pipe = load_pretrained(model, device=device)
    pipe.generation.update(check_generation(dict(generation or {}), "benchmark"))
    tasks = options.pop("tasks", None) or default_tasks(pipe)
    dialogues = options.pop("dialogues", "data/shapes-chat/val-*.tar")
    report: dict = {"model": model}
    if set(tasks) - {"dialogue"}:
        report |= benchmark_model(pipe, shards, n, tasks=tasks, **options)
    if "dialogue" in tasks:
        chat = {k: v for k, v in options.items() if k in ("batch_size", "seed", "examples")}
        report |= benchmark_dialogues(pipe, dialogues, n, **chat)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="omni shapes benchmark",
        description="The shapes analyzer and benchmark. With --model: generate, caption and answer "
        "on validation samples with a trained model folder and print the accuracies as JSON "
        "(t2i_accuracy, caption_accuracy, vqa_accuracy, each also _one/_two by object count; "
        "images_per_second, captions_per_second). Without it: score the ground-truth images "
        "and captions of --shards (a self-check of the analyzer).",
    )
    parser.add_argument(
        "--shards", help="image shard pattern (default with --model: 'data/shapes/val-*.tar')"
    )
    parser.add_argument("--model", help="model folder written by train.py: benchmark it")
    parser.add_argument("--n", type=int, default=500, help="--model: validation samples to use (default 500)")
    parser.add_argument(
        "--tasks",
        help="--model: comma-separated subset of t2i,caption,vqa,plan,ground,gvqa,dialogue (default t2i,"
        "caption,vqa, and plan,ground,gvqa for a grounded model: layout-first text-to-image, referring "
        "expressions, answers that find the named objects first)",
    )
    parser.add_argument(
        "--dialogues",
        default="data/shapes-chat/val-*.tar",
        help="--model, task dialogue: dialogue shards (default 'data/shapes-chat/val-*.tar'); --n of them",
    )
    parser.add_argument("--batch-size", type=int, default=64, help="--model: samples generated at once")
    parser.add_argument("--seed", type=int, default=0, help="--model: sampling seed (default 0)")
    parser.add_argument("--device", default="cpu", help="--model: torch device (default cpu)")
    parser.add_argument(
        "--guidance", type=float, help="--model: classifier-free guidance (default: the folder's)"
    )
    parser.add_argument(
        "--temperature", type=float, help="--model: image sampling temperature (default: the folder's)"
    )
    parser.add_argument(
        "--mask-steps", type=int, help="--model, mask mode: decoding steps (default: the folder's)"
    )
    parser.add_argument("--out", help="also write the JSON report to this file")
    parser.add_argument("--limit", type=int, default=None, help="self-check: score at most this many samples")
    parser.add_argument(
        "--blur-radius", type=int, default=0, help="self-check: blur images with a (2r+1)^2 box filter first"
    )
    args = parser.parse_args(argv)
    if args.model is None and args.shards is None:
        parser.error("give --model FOLDER (benchmark a model) or --shards PATTERN (analyzer self-check)")
    if args.model is not None:
        tasks = tuple(t.strip() for t in (args.tasks or "").split(",") if t.strip()) or None
        unknown = set(tasks or ()) - set(ALL_TASKS)
        if unknown or (args.tasks is not None and not tasks) or args.n < 1 or args.batch_size < 1:
            parser.error(
                f"--tasks takes {','.join(ALL_TASKS)} (got {args.tasks!r}); --n and --batch-size must be >= 1"
            )
        # A bad model folder (ModelFolderError, a ValueError) is reported below as one line.
        report = run(
            args.model,
            args.shards or "data/shapes/val-*.tar",
            args.n,
            device=args.device,
            batch_size=args.batch_size,
            seed=args.seed,
            tasks=tasks,
            dialogues=args.dialogues,
            generation={
                name: value
                for name, value in (
                    ("guidance_scale", args.guidance),
                    ("temperature", args.temperature),
                    ("mask_steps", args.mask_steps),
                )
                if value is not None
            },
        )
    else:
        report = evaluate_shards(args.shards, args.limit, args.blur_radius)
    text = json.dumps(report, indent=2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0
