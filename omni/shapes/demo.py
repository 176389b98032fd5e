"""The end-to-end shapes demo that `make demo` runs: data -> VQ tokenizer -> BPE -> code shards ->
unified model -> benchmark -> samples, then a summary table (also demo/summary.json).

    omni demo                 # everything (about 30 minutes on a 2-core CPU)
    omni demo --from model    # redo the model and what follows, keep the rest
    omni demo --list          # the stages and their commands

Each stage is one of the project's own commands, run as a subprocess and printed first, so
any stage can be re-run by hand. Everything random is seeded and both trainings run a fixed
number of steps (configs/shapes/vq.yaml and model.yaml: trainer.max_steps), so two runs on one
machine give the same figures; trainer.max_time is only a guard for slower machines, and a
stage it stops early is named in a warning and in the summary. Outputs: data/shapes,
data/shapes-vq, data/shapes-codes, runs/shapes/{vq,tokenizer.json,model}, and demo/ (vq.json,
benchmark.json, t2i/ and captions/ from sample.py, grid.png, summary.json: figures, steps per
training stage, seeds, minutes).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from omni.errors import CommandError
from omni.release import read_marker

DEMO = Path("demo")
OMNI = [sys.executable, "-m", "omni"]  # the `omni` command of this interpreter

# Colour-shape pairs kept out of the training data (each colour and shape still appears in
# others): the benchmark scores the validation scenes holding one apart (`*_heldout`), a measure
# of composition rather than memory.
HELDOUT = ("magenta triangle", "cyan circle", "yellow square")

# The VQ tokenizer is a general image tokenizer, trained on every combination (data/shapes-vq: the
# training draw with nothing held out): a VQ that never saw a cyan circle cannot encode or draw one,
# whatever the unified model composes (trained on data/shapes alone, it lost 13 of the 500
# validation scenes on held-out pairs, most of its losses). The unified model, whose composition
# the held-out figures measure, never sees a held-out pair in its captions, images or codes.
STAGES: list[tuple[str, list[str]]] = [
    ("data", [*OMNI, "shapes", "make", "--out", "data/shapes", "--train", "20000", "--val", "500",
              "--per-shard", "2000", "--size", "32", "--seed", "0", "--holdout", ",".join(HELDOUT)]),
    ("analyzer", [*OMNI, "shapes", "benchmark", "--shards", "data/shapes/val-*.tar"]),
    # The VQ tokenizer's images: the same draw with nothing held out (see above).
    ("vq-data", [*OMNI, "shapes", "make", "--out", "data/shapes-vq", "--train", "20000", "--val", "0",
                 "--per-shard", "2000", "--size", "32", "--seed", "0"]),
    ("vq", [*OMNI, "tokenizer", "train-vq", "fit", "--config", "configs/shapes/vq.yaml",
            "--trainer.enable_progress_bar", "false"]),
    ("vq-eval", [*OMNI, "tokenizer", "eval", "--vq", "runs/shapes/vq", "--shards", "data/shapes/val-*.tar",
                 "--out", "demo/vq.json"]),
    ("bpe", [*OMNI, "tokenizer", "train-text", "--shards", "data/shapes/train-*.tar",
             "--out", "runs/shapes/tokenizer.json"]),
    ("codes", [*OMNI, "tokenizer", "encode", "--vq", "runs/shapes/vq", "--shards", "data/shapes/*.tar",
               "--out", "data/shapes-codes", "--overwrite"]),
    ("model", [*OMNI, "train", "fit", "--config", "configs/shapes/model.yaml",
               "--trainer.enable_progress_bar", "false"]),
    ("benchmark", [*OMNI, "shapes", "benchmark", "--model", "runs/shapes/model", "--n", "500",
                   "--out", "demo/benchmark.json"]),
    ("samples", [*OMNI, "sample", "t2i", "--model", "runs/shapes/model", "--out", "demo/t2i",
                 "--prompts-file", "configs/shapes/demo_prompts.txt", "--per-prompt", "2"]),
    ("captions", [*OMNI, "sample", "caption", "--model", "runs/shapes/model", "--out", "demo/captions",
                  *(f"demo/t2i/{i:04d}.png" for i in range(0, 32, 2))]),
]  # fmt: skip
STAGE_NAMES = [name for name, _ in STAGES]
# The trainers never replace a release or checkpoints of another run, so a training stage the
# demo redoes must start from a clean slate: the demo removes its own previous run (release
# folder, then its training folder), and only that: demo/runs.json records which run each
# release folder held when the demo made it. Anything else there is left alone and reported.
STAGE_OUTPUTS = {
    "vq": ("runs/shapes/vq", "runs/shapes/vq-train"),
    "model": ("runs/shapes/model", "runs/shapes/model-train"),
}
RUNS = DEMO / "runs.json"


def _demo_runs() -> dict:
    try:
        return json.loads(RUNS.read_text())
    except (OSError, ValueError):
        return {}


def clear_previous_run(name: str) -> None:
    """Remove what the demo's own earlier run of stage `name` left; refuse if it is anyone else's."""
    if name not in STAGE_OUTPUTS:
        return
    release, train = map(Path, STAGE_OUTPUTS[name])
    marker = read_marker(release) if release.is_dir() else None
    ours = (
        marker is not None
        and marker.get("run") is not None
        and marker.get("run") == _demo_runs().get(str(release))
    )
    checkpoints = list(train.rglob("*.ckpt")) if train.is_dir() else []
    if ours:
        for folder in (release, train):
            if folder.exists():
                print(f"=== demo stage {name}: removing its previous run {folder}/", flush=True)
                shutil.rmtree(folder)
    elif release.exists() or checkpoints:
        raise CommandError(
            f"demo stage {name}: {release} or {train} holds a run that this demo did not make (or made before "
            f"it recorded its runs); move them away or delete them yourself, then resume with "
            f"`omni demo --from {name}`"
        )


def record_run(name: str) -> None:
    """Remember which run the stage's release folder holds (see clear_previous_run)."""
    if name not in STAGE_OUTPUTS:
        return
    release = STAGE_OUTPUTS[name][0]
    marker = read_marker(release) if Path(release).is_dir() else None
    if marker and marker.get("run"):
        runs = _demo_runs() | {release: marker["run"]}
        RUNS.parent.mkdir(parents=True, exist_ok=True)
        RUNS.write_text(json.dumps(runs, indent=2) + "\n")


# Benchmark keys copied into the summary, in the order the table prints them.
SUMMARY_KEYS = (
    "t2i_accuracy", "t2i_accuracy_one", "t2i_accuracy_two", "t2i_accuracy_heldout",
    "t2i_plan_accuracy", "t2i_plan_accuracy_one", "t2i_plan_accuracy_two", "t2i_plan_accuracy_heldout",
    "plan_accuracy", "plan_accuracy_two",
    "caption_accuracy", "caption_accuracy_one", "caption_accuracy_two", "caption_accuracy_heldout",
    "vqa_accuracy", "vqa_accuracy_heldout", "vqa_relation_accuracy", "vqa_grounded_relation_accuracy",
    "grounding_accuracy", "grounding_iou", "images_per_second", "captions_per_second",
)  # fmt: skip


def seeded(stages: list[tuple[str, list[str]]], seed: int) -> list[tuple[str, list[str]]]:
    """The stages with another seed for everything random: the data, and both trainings (their
    initialisation and their data order)."""
    out = []
    for name, argv in stages:
        argv = list(argv)
        if "--seed" in argv:
            argv[argv.index("--seed") + 1] = str(seed)
        if "fit" in argv:
            argv += ["--seed_everything", str(seed), "--data.seed", str(seed)]
        out.append((name, argv))
    return out


def training_steps(name: str) -> dict | None:
    """What the release of training stage `name` records of its run: steps trained and planned,
    and whether the time limit stopped it early (None: not a training stage, or no release)."""
    if name not in STAGE_OUTPUTS:
        return None
    marker = read_marker(STAGE_OUTPUTS[name][0]) or {}
    if "trained_steps" not in marker:
        return None
    return {
        "trained": marker["trained_steps"],
        "planned": marker.get("planned_steps"),
        "stopped_by_time_limit": bool(marker.get("stopped_by_time_limit")),
    }


def run_stages(names: list[str], seed: int = 0) -> dict[str, float]:
    """Run the named stages in order; minutes per stage. A failing stage stops the demo."""
    minutes = {}
    for name, argv in seeded(STAGES, seed) if seed else STAGES:
        if name not in names:
            continue
        clear_previous_run(name)
        print(f"\n=== demo stage {name}: {' '.join(argv)}", flush=True)
        start = time.perf_counter()
        try:
            code = subprocess.call(argv)
        finally:  # even when interrupted: the run it started is the demo's own
            record_run(name)
        minutes[name] = (time.perf_counter() - start) / 60
        print(f"=== demo stage {name}: {minutes[name]:.1f} min", flush=True)
        steps = training_steps(name) if code == 0 else None
        if steps and steps["stopped_by_time_limit"]:
            print(f"=== demo stage {name}: {TIME_LIMITED.format(**steps)}", flush=True)
        if code != 0:
            raise CommandError(
                f"demo stage {name!r} failed (exit {code}); fix the error above, then resume with "
                f"`omni demo --from {name}`"
            )
    return minutes


TIME_LIMITED = (
    "warning: the time limit stopped training at step {trained:,} of {planned:,}; this run's figures are "
    "not comparable with a full run's (a slower or busier machine: raise trainer.max_time in the stage's config)"
)


def summarize(minutes: dict[str, float], seed: int | None = None) -> dict:
    """demo/summary.json from the stage outputs; stage times and seeds of stages not re-run are kept."""
    path = DEMO / "summary.json"
    previous = json.loads(path.read_text()) if path.is_file() else {}
    summary: dict = {}
    bench_path, vq_path = DEMO / "benchmark.json", DEMO / "vq.json"
    if bench_path.is_file():
        bench = json.loads(bench_path.read_text())
        # The relation questions' accuracy (the binding figure), plain and through boxes.
        for key, by_kind in (
            ("vqa_relation_accuracy", "vqa_by_question"),
            ("vqa_grounded_relation_accuracy", "vqa_grounded_by_question"),
        ):
            if "relation" in bench.get(by_kind, {}):
                bench[key] = bench[by_kind]["relation"]
        summary |= {k: bench.get(k) for k in SUMMARY_KEYS if bench.get(k) is not None}
        summary["benchmark_samples"] = bench.get("n")
    if vq_path.is_file():
        vq = json.loads(vq_path.read_text())
        summary |= {"scene_accuracy": vq.get("scene_accuracy"), "vq_psnr": vq.get("psnr")}
    captions = DEMO / "captions" / "results.json"
    if captions.is_file():
        prompts = json.loads((DEMO / "t2i" / "results.json").read_text())["items"][::2]
        items = json.loads(captions.read_text())["items"]
        summary["round_trip"] = [
            {"prompt": p["prompt"], "caption_of_generated_image": c["caption"]}
            for p, c in zip(prompts, items)
        ]
    # Which seed made each stage's output: a partial rerun (--from model --seed 1) mixes seeds.
    seeds = dict(previous.get("seeds", {})) | ({k: seed for k in minutes} if seed is not None else {})
    summary["seed"] = next(iter(set(seeds.values()))) if len(set(seeds.values())) == 1 else None
    summary["seeds"] = seeds
    summary["steps"] = {name: steps for name in STAGE_OUTPUTS if (steps := training_steps(name))}
    summary["stopped_by_time_limit"] = [n for n, s in summary["steps"].items() if s["stopped_by_time_limit"]]
    stage_minutes = dict(previous.get("minutes", {}))
    stage_minutes.update({k: round(v, 2) for k, v in minutes.items()})
    summary["minutes"] = stage_minutes
    summary["total_minutes"] = round(sum(stage_minutes.values()), 2)
    grid = DEMO / "t2i" / "grid.png"
    if grid.is_file():
        shutil.copyfile(grid, DEMO / "grid.png")
        summary["grid"] = "demo/grid.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def table(summary: dict) -> str:
    """The summary as an aligned text table."""
    lines = ["", "Omni shapes demo", "----------------"]
    for key in ("scene_accuracy", *SUMMARY_KEYS):
        value = summary.get(key)
        if value is None:
            continue
        shown = f"{value:.1%}" if "accuracy" in key else f"{value:.1f}"
        lines.append(f"{key:<24}{shown:>10}")
    for name, steps in summary.get("steps", {}).items():
        lines.append(f"{'steps ' + name:<24}{steps['trained']:>10,}")
    for name, value in summary.get("minutes", {}).items():
        lines.append(f"{'minutes ' + name:<24}{value:>10.1f}")
    lines.append(f"{'minutes total':<24}{summary.get('total_minutes', 0):>10.1f}")
    for item in summary.get("round_trip", [])[:6]:
        lines.append(
            f"  {item['prompt']!r} -> generated image captioned {item['caption_of_generated_image']!r}"
        )
    if "grid" in summary:
        lines.append(f"samples: {summary['grid']}; everything: demo/summary.json")
    for name in summary.get("stopped_by_time_limit", []):
        lines.append(f"stage {name}: " + TIME_LIMITED.format(**summary["steps"][name]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="omni demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--from", dest="start", choices=STAGE_NAMES, help="start at this stage")
    parser.add_argument("--only", choices=STAGE_NAMES, help="run only this stage (then summarize)")
    parser.add_argument("--list", action="store_true", help="print the stages and their commands")
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the data and of both trainings (default 0, the configs' own); another seed "
        "measures the run-to-run spread (with --from model: the model's training alone)",
    )
    args = parser.parse_args(argv)
    if args.list:
        for name, cmd in seeded(STAGES, args.seed) if args.seed else STAGES:
            print(f"{name:<10} {' '.join(cmd)}")
        return 0
    names = (
        [args.only]
        if args.only
        else STAGE_NAMES[STAGE_NAMES.index(args.start) :]
        if args.start
        else STAGE_NAMES
    )
    if names and names[0] == STAGE_NAMES[0]:
        (DEMO / "summary.json").unlink(missing_ok=True)  # a full run starts a fresh summary
    summary = summarize(run_stages(names, args.seed), args.seed)
    print(table(summary))
    return 0
