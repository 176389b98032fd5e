"""The packaging guards: `tokenizers/` never shadows Hugging Face's package; the wheel holds only omni."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from conftest import REPO


def test_tokenizers_folder_has_no_init():
    assert (REPO / "tokenizers").is_dir()
    assert not (REPO / "tokenizers" / "__init__.py").exists(), (
        "tokenizers/__init__.py would shadow Hugging Face's tokenizers; importable code belongs in omni/"
    )


def test_import_tokenizers_is_hugging_face_from_repo_root():
    code = "import tokenizers, sys; print(tokenizers.__file__); sys.exit(0 if hasattr(tokenizers, 'Tokenizer') else 1)"
    # `python -c` puts the working directory first on sys.path, as a user at the repo root would.
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "site-packages" in out.stdout, out.stdout


def test_wheel_holds_only_omni_with_its_license_and_version(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(
        REPO,
        src,
        ignore=shutil.ignore_patterns(
            ".venv", ".git", "data", "runs", "demo", "build", "*.egg-info", "__pycache__"
        ),
    )
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(src),
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    tops = {name.split("/", 1)[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert "omni" in tops
    assert {t for t in tops if not t.endswith(".dist-info")} == {"omni"}, tops
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.startswith("omni/eval/") for n in names)
    # Packaging: an SPDX license string with its file, the version from omni.__version__, and
    # xformers only as an extra (its wheels pin torch, so a dependency could replace a CUDA torch).
    import omni

    (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
    meta = zipfile.ZipFile(wheel).read(metadata).decode()
    assert "License-Expression: Apache-2.0" in meta.splitlines()
    assert f"Version: {omni.__version__}" in meta.splitlines()
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    xformers = [line for line in meta.splitlines() if line.startswith("Requires-Dist: xformers")]
    assert xformers and all('extra == "xformers"' in line for line in xformers), xformers
    license_text = (REPO / "LICENSE").read_text()
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text


def test_only_our_own_input_errors_lose_their_traceback(capsys):
    import pytest

    from omni.data.shards import expand_shards
    from omni.errors import report_user_errors

    with pytest.raises(SystemExit) as e:
        report_user_errors(lambda: expand_shards("no/such-*.tar"))
    assert e.value.code == 2 and capsys.readouterr().err.startswith("error: no shards match 'no/such-*.tar'")
    # Raised outside omni (here by int() in this file): a bug, so the traceback stays.
    with pytest.raises(ValueError, match="invalid literal"):
        report_user_errors(lambda: int("x"))


def test_constraints_pin_every_package_the_project_installs():
    """constraints.txt is the tested set: every distribution that omni-multimodal[dev] pulls in is
    pinned there, and make's .venv holds exactly those versions."""
    import pytest

    if Path(sys.prefix).resolve() != (REPO / ".venv").resolve():
        pytest.skip("checks make's .venv (run `make test`); this environment was installed another way")
    from importlib.metadata import PackageNotFoundError, distribution

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not pinned with =="
            pins[canonicalize_name(name)] = version
    walked: set[tuple[str, str]] = set()  # (package, extra): a package reached again with extras is re-walked
    installed, todo = {}, [("omni-multimodal", "dev")]
    while todo:
        name, extra = todo.pop()
        key = canonicalize_name(name)
        if (key, extra) in walked:
            continue
        walked.add((key, extra))
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            assert key != "omni-multimodal", "the project itself is not installed here"
            continue  # a requirement whose marker does not apply here is not installed
        if key != "omni-multimodal":
            installed[key] = dist.version
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": extra}):
                todo += [(req.name, "")] + [(req.name, e) for e in req.extras]
    assert "torch" in installed and "tensorboard" in installed
    unpinned = sorted(set(installed) - set(pins))
    assert not unpinned, f"not pinned in constraints.txt: {unpinned}; refresh it with `make constraints`"
    drifted = {k: (v, pins[k]) for k, v in installed.items() if v != pins[k]}
    assert not drifted, (
        f"installed != pinned: {drifted}; reinstall with make, or refresh with `make constraints`"
    )
