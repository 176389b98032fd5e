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
    assert any(n.startswith("omni/shapes/") for n in names)
    # The `omni` command comes with the package: a pip install without the checkout has every command.
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    assert "omni = omni.commands:main" in zipfile.ZipFile(wheel).read(entry_points).decode().splitlines()
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
    from omni.errors import run_command

    assert run_command(lambda argv: expand_shards("no/such-*.tar")) == 2
    assert capsys.readouterr().err.startswith("error: no shards match 'no/such-*.tar'")
    # Raised outside omni (here by int() in this file): a bug, so the traceback stays.
    with pytest.raises(ValueError, match="invalid literal"):
        run_command(lambda argv: int("x"))


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


def import_graph() -> dict[str, set[str]]:
    """omni's modules -> the omni modules each imports (lazy imports inside functions included)."""
    import ast

    modules = {}
    for path in (REPO / "omni").rglob("*.py"):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts)
        modules[name.removesuffix(".__init__")] = path
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            found |= {t for t in targets if t in modules and t != name}
        graph[name] = found
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles_between_modules_or_packages():
    """Each package stands on the ones below it: a cycle means two ideas have no single home."""
    graph = import_graph()
    assert cycles(graph) == []

    def package(module: str) -> str:  # omni.data.loader -> omni.data; omni.model -> omni.model
        parts = module.split(".")
        return ".".join(parts[:2])

    packages: dict[str, set[str]] = {}
    for module, imported in graph.items():
        packages.setdefault(package(module), set()).update(package(m) for m in imported)
    packages = {p: deps - {p} for p, deps in packages.items()}
    assert cycles(packages) == []
    # The model is the core: it imports nothing from training, data, the grammar or the shapes world
    # (its understanding encoder is one of its parts, and as plain).
    core = ("omni.attention", "omni.checks", "omni.understanding")
    assert not {m for m in graph["omni.model"] | graph["omni.understanding"] if not m.startswith(core)}
    # The tokenizer package is general: the shapes world plugs into it, never the other way round.
    assert not any(
        m.startswith("omni.shapes") for t, ms in graph.items() if t.startswith("omni.tokenizers") for m in ms
    )


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
