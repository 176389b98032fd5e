"""The demo driver: its stages are the documented commands, and it summarises what they wrote."""

from __future__ import annotations

import json

import pytest
from conftest import REPO, checkpoint_callback
from PIL import Image

from omni.errors import CommandError
from omni.shapes import demo


def test_stages_name_existing_commands_and_configs():
    from omni.commands import find

    for name, argv in demo.STAGES:
        assert argv[:3] == demo.OMNI and find(argv[3:]) is not None, f"stage {name}: not an omni command"
        for arg in argv[3:]:
            if arg.endswith((".py", ".yaml", ".txt")) and not arg.startswith("demo/"):
                assert (REPO / arg).is_file(), f"stage {name}: {arg} does not exist"


def test_summary_collects_benchmark_tokenizer_and_minutes(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "demo"
    (root / "t2i").mkdir(parents=True)
    (root / "captions").mkdir()
    bench = {key: 0.5 for key in demo.SUMMARY_KEYS} | {"n": 500}
    (root / "benchmark.json").write_text(json.dumps(bench))
    (root / "vq.json").write_text(json.dumps({"scene_accuracy": 0.97, "psnr": 29.0}))
    items = [{"prompt": f"p{i // 2}", "image": f"{i:04d}.png"} for i in range(4)]
    (root / "t2i" / "results.json").write_text(json.dumps({"items": items}))
    (root / "captions" / "results.json").write_text(
        json.dumps({"items": [{"caption": "c0"}, {"caption": "c1"}]})
    )
    Image.new("RGB", (8, 8)).save(root / "t2i" / "grid.png")

    from omni.release import MARKER

    for name, (trained, planned, stopped) in {"vq": (4000, 4000, False), "model": (5210, 7000, True)}.items():
        release = tmp_path / demo.STAGE_OUTPUTS[name][0]
        release.mkdir(parents=True)
        facts = {"trained_steps": trained, "planned_steps": planned, "stopped_by_time_limit": stopped}
        (release / MARKER).write_text(json.dumps({"kind": name, "run": "r"} | facts))

    summary = demo.summarize({"model": 18.0, "benchmark": 2.0}, seed=0)
    saved = json.loads((root / "summary.json").read_text())
    assert saved == summary
    # The steps each training stage ran (of those planned), and the seed, are part of the record.
    assert summary["seed"] == 0 and summary["seeds"] == {"model": 0, "benchmark": 0}
    assert summary["steps"]["vq"] == {"trained": 4000, "planned": 4000, "stopped_by_time_limit": False}
    assert summary["steps"]["model"]["trained"] == 5210 and summary["stopped_by_time_limit"] == ["model"]
    assert all(summary[key] == 0.5 for key in demo.SUMMARY_KEYS)
    assert summary["scene_accuracy"] == 0.97 and summary["total_minutes"] == 20.0
    assert summary["round_trip"] == [
        {"prompt": "p0", "caption_of_generated_image": "c0"},
        {"prompt": "p1", "caption_of_generated_image": "c1"},
    ]
    assert (root / "grid.png").is_file()
    text = demo.table(summary)
    assert "t2i_accuracy" in text and "50.0%" in text and "minutes total" in text
    assert "steps model                  5,210" in text
    assert "stage model: warning: the time limit stopped training at step 5,210 of 7,000" in text
    # A later partial run keeps the minutes of the stages it did not redo, and says which seed made what.
    again = demo.summarize({"benchmark": 1.0}, seed=1)
    assert again["minutes"] == {"model": 18.0, "benchmark": 1.0}
    assert again["seeds"] == {"model": 0, "benchmark": 1} and again["seed"] is None


def test_list_and_a_failing_stage(monkeypatch, capsys):
    assert demo.main(["--list"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in demo.STAGE_NAMES)
    monkeypatch.setattr(demo, "STAGES", [("broken", ["false"])])
    with pytest.raises(CommandError, match="--from broken"):
        demo.run_stages(["broken"])


def test_a_redone_stage_removes_the_demos_own_run_and_nothing_else(tmp_path, monkeypatch):
    """Trainers refuse folders another run wrote, so the demo clears its own earlier run first,
    and refuses (touching nothing) when the folders hold a run it did not make."""
    import yaml

    from omni.release import MARKER

    for config in ("vq", "model"):
        cfg = yaml.safe_load((REPO / f"configs/shapes/{config}.yaml").read_text())
        release, train = demo.STAGE_OUTPUTS[config]
        assert cfg["model"]["export_dir"] == release
        assert checkpoint_callback(cfg)["init_args"]["dirpath"].startswith(f"{train}/")
    monkeypatch.chdir(tmp_path)
    release, train = (tmp_path / p for p in demo.STAGE_OUTPUTS["model"])

    def a_run(run_id):
        for folder in (release, train / "checkpoints"):
            folder.mkdir(parents=True, exist_ok=True)
        (train / "checkpoints" / "last.ckpt").write_text("weights")
        (release / MARKER).write_text(json.dumps({"kind": "model", "run": run_id}))

    a_run("by-hand")  # a run the user trained with the shapes config
    monkeypatch.setattr(demo, "STAGES", [("model", ["true"])])
    with pytest.raises(CommandError, match="holds a run that this demo did not make"):
        demo.run_stages(["model"])
    assert (train / "checkpoints" / "last.ckpt").is_file() and (release / MARKER).is_file()
    # The demo's own run (recorded in demo/runs.json) is removed before the stage runs again.
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "runs.json").write_text(json.dumps({"runs/shapes/model": "by-hand"}))
    (tmp_path / "runs/shapes/vq").mkdir()  # another stage's output stays
    demo.run_stages(["model"])
    assert not release.exists() and not train.exists() and (tmp_path / "runs/shapes/vq").is_dir()
    # After a stage, the run its release holds is recorded.
    a_run("demo-run")
    demo.record_run("model")
    assert json.loads((tmp_path / "demo" / "runs.json").read_text())["runs/shapes/model"] == "demo-run"


def test_make_demo_runs_the_omni_demo_command():
    """The Makefile's demo recipe is a command that exists (a module run with -m that has no
    __main__ would exit 0 having done nothing)."""
    import re

    from omni.commands import find

    recipe = re.search(r"^demo:.*\n((?:\t.*\n)+)", (REPO / "Makefile").read_text(), re.M).group(1)
    (line,) = [x.strip() for x in recipe.splitlines() if x.strip()]
    assert line.startswith("$(VENV)/bin/omni ") and find(line.split()[1:]) == (("demo",), [])


def test_the_demo_holds_out_combinations_and_summarises_them_apart():
    from omni.shapes.scenes import parse_holdout

    (data,) = [argv for name, argv in demo.STAGES if name == "data"]
    held = data[data.index("--holdout") + 1].split(",")
    assert len(parse_holdout(held)) == len(demo.HELDOUT) >= 3
    assert {"t2i_accuracy_heldout", "caption_accuracy_heldout", "vqa_accuracy_heldout"} <= set(
        demo.SUMMARY_KEYS
    )


def test_another_seed_reaches_the_data_and_both_trainings(capsys):
    stages = dict(demo.seeded(demo.STAGES, 7))
    assert stages["data"][stages["data"].index("--seed") + 1] == "7"
    for name in ("vq", "model"):
        assert stages[name][-4:] == ["--seed_everything", "7", "--data.seed", "7"], name
    assert stages["benchmark"] == dict(demo.STAGES)["benchmark"]
    assert demo.main(["--list", "--seed", "7"]) == 0
    assert "--seed_everything 7" in capsys.readouterr().out


def test_the_demo_trains_a_fixed_number_of_steps_with_time_as_a_guard():
    """Steps, not minutes, decide a demo run (its figures must not depend on the machine's load);
    the time limit stays as a guard for slower machines."""
    import yaml

    for name in demo.STAGE_OUTPUTS:
        trainer = yaml.safe_load((REPO / f"configs/shapes/{name}.yaml").read_text())["trainer"]
        assert trainer["max_steps"] > 0, name
        assert trainer["max_time"], f"{name}: no time guard"
