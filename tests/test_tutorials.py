"""Every tutorial runs top to bottom in smoke mode (tiny sizes), each in its own process.

The documentation build executes the same tutorials at the same sizes (sphinx-gallery, see
docs/conf.py). CI (.ci/run) builds the documentation first, with warnings as errors, and then
sets ``PYRO_MSM_DOCS_EXECUTED=1`` for pytest: a tutorial whose exact source that build has
just executed, with the library as it is now, is not run a second time (the test is skipped and
says so). Anywhere else, and for any tutorial the build did not run, the test runs it.
"""

import ast
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = sorted((ROOT / "tutorials").glob("t[0-9][0-9]_*.py"))
GALLERY = ROOT / "docs" / "tutorials"  # sphinx-gallery's output for the tutorials


def test_the_tutorials_are_there():
    names = {path.stem for path in TUTORIALS}
    assert {
        "t01_quickstart",
        "t02_energy_model",
        "t03_sparse_graphs",
        "t04_arviz",
        "t05_truncated",
        "t06_nonnegative_graphs",
    } <= names


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_the_tutorials_use_the_public_api_only(path):
    """No experiment harnesses (``pyro_msm.experiments``) and no private names."""
    imported = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            imported += [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            imported += [alias.name for alias in node.names]
    ours = [name for name in imported if name.startswith("pyro_msm")]
    assert ours, f"{path.name} does not use pyro_msm"
    for name in ours:
        assert not name.startswith("pyro_msm.experiments"), f"{path.name} imports {name}"
        assert not any(part.startswith("_") for part in name.split(".")), name


def executed_by_the_docs_build(path: Path) -> bool:
    """Whether the documentation build has executed this very source after the last change to
    the library: sphinx-gallery records the md5 of the source it ran, and the generated page
    holds the captured output only when the tutorial was executed (it fails the ``-W`` build
    otherwise)."""
    if os.environ.get("PYRO_MSM_DOCS_EXECUTED") != "1":
        return False
    md5, page = GALLERY / f"{path.name}.md5", GALLERY / f"{path.stem}.rst"
    if not (md5.is_file() and page.is_file()):
        return False
    if md5.read_text().strip() != hashlib.md5(path.read_bytes()).hexdigest():
        return False
    library = max(p.stat().st_mtime for p in (ROOT / "pyro_msm").rglob("*.py"))
    return page.stat().st_mtime >= library and "sphx-glr-script-out" in page.read_text()


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_runs_in_smoke_mode(path, tmp_path):
    if executed_by_the_docs_build(path):
        pytest.skip(f"{path.name}: executed by this run's documentation build (same source)")
    env = dict(os.environ)
    env.update(
        PYRO_MSM_SMOKE="1",
        MPLBACKEND="Agg",
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
    )
    done = subprocess.run(
        [sys.executable, str(path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, (
        f"{path.name}: failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    )


def test_the_docs_build_check_needs_the_same_source_and_its_output(tmp_path, monkeypatch):
    """The skip above applies only to the source the build ran, with its output captured, and
    only when CI says the build just ran."""
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    monkeypatch.setattr(sys.modules[__name__], "GALLERY", gallery)
    source = TUTORIALS[0]
    (gallery / f"{source.name}.md5").write_text(hashlib.md5(source.read_bytes()).hexdigest())
    page = gallery / f"{source.stem}.rst"
    page.write_text(".. rst-class:: sphx-glr-script-out\n")
    monkeypatch.setenv("PYRO_MSM_DOCS_EXECUTED", "1")
    assert executed_by_the_docs_build(source)
    edited = tmp_path / source.name
    edited.write_bytes(source.read_bytes() + b"\n# edited\n")
    assert not executed_by_the_docs_build(edited)  # another source
    page.write_text("rendered without running it\n")
    assert not executed_by_the_docs_build(source)  # no captured output
    page.write_text(".. rst-class:: sphx-glr-script-out\n")
    os.utime(page, (0, 0))
    assert not executed_by_the_docs_build(source)  # built before the library last changed
    monkeypatch.delenv("PYRO_MSM_DOCS_EXECUTED")
    page.touch()
    assert not executed_by_the_docs_build(source)  # not told that this run built the docs
