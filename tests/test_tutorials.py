"""Every tutorial runs top to bottom in smoke mode (tiny sizes), each in its own process.

This is where the tutorials are executed in CI; the documentation build renders them without
running them (see docs/conf.py).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = sorted((ROOT / "tutorials").glob("t[0-9][0-9]_*.py"))


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
def test_tutorial_runs_in_smoke_mode(path, tmp_path):
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
        f"{path.name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    )
