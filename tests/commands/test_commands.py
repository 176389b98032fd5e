"""The `omni` command: every subcommand is found, explains itself, and errors follow one convention."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest
from conftest import REPO

from omni.commands import COMMANDS, find, main


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(" ".join(words) in out for words in COMMANDS)
    assert main(["tokenizer", "poem"]) == 2 and "unknown command 'tokenizer poem'" in capsys.readouterr().err
    assert main(["tokenizer"]) == 2
    assert "omni tokenizer takes a subcommand: train-vq, eval, train-text, encode" in capsys.readouterr().err


def test_the_longest_command_words_win():
    assert find(["tokenizer", "encode", "--vq", "x"]) == (("tokenizer", "encode"), ["--vq", "x"])
    assert find(["sample", "t2i", "a"]) == (("sample",), ["t2i", "a"])
    assert find(["tokenizer"]) is None


LIGHTNING = {("train",), ("tokenizer", "train-vq")}  # LightningCLI: tests/training/test_train_model.py


@pytest.mark.parametrize("words", [w for w in COMMANDS if w not in LIGHTNING], ids=" ".join)
def test_every_argparse_command_has_a_help(words, capsys):
    module = importlib.import_module(COMMANDS[words][0])
    with pytest.raises(SystemExit) as e:
        module.main(["--help"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith(f"usage: omni {' '.join(words)}")


def test_python_m_omni_and_an_entry_file_run_the_same_command(tmp_path):
    for cmd in ([sys.executable, "-m", "omni", "sample"], [sys.executable, "sample.py"]):
        res = subprocess.run(
            [*cmd, "text", "--model", str(tmp_path / "nowhere"), "x"],
            cwd=REPO,
            capture_output=True,
            text=True,
        )
        assert res.returncode == 2 and res.stderr.startswith("error: ") and "nowhere" in res.stderr
        assert "Traceback" not in res.stderr
