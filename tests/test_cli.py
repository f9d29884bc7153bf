"""The command line interface: ``python -m pyro_msm demo`` (fast: tiny sizes)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pyro_msm.cli import main

METHODS = (
    "iw",
    "variational",
    "zeroed",
    "mean_impute",
    "complete_case",
    "exact_marginal",
    "complete_oracle",
)


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "pyro_msm", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def test_demo_smoke_prints_table_and_plot(tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "curves" / "loss.png"
    proc = _run("demo", "--smoke", "--no-progress", "--plot", str(png))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "score MSE" in out and "x exact" in out
    table = out.split("score MSE", 1)[1]
    for name in METHODS:
        assert f"\n{name} " in table, f"{name} missing from the table:\n{out}"
    assert "IW mean effective sample size" in out
    assert png.exists() and png.stat().st_size > 1000
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "args, message",
    [
        (["demo", "--missing-rate", "1.0"], "missing rate must be in [0, 1)"),
        (["demo", "--missing-rate", "-0.1"], "missing rate must be in [0, 1)"),
        (["demo", "--missing-rate", "lots"], "missing rate must be a number"),
        (["demo", "--dim", "1"], "--dim must be at least 2"),
        (["demo", "--steps", "0"], "--steps must be at least 1"),
        (["demo", "--n", "x"], "--n must be an integer"),
        (["demo", "--num-particles", "0"], "--num-particles must be at least 1"),
        (["demo", "--lr", "-1"], "must be a positive number"),
        (["demo", "--mechanism", "sometimes"], "invalid choice"),
        (["demo", "--mechanism", "mar", "--dim", "2", "--missing-rate", "0.6"], "too high"),
        (["demo", "--smoke", "--n", "3"], "must exceed --dim"),
        (["frobnicate"], "invalid choice"),
        ([], "required"),
    ],
)
def test_bad_arguments_exit_nonzero_with_message(args, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code != 0
    assert message in capsys.readouterr().err


def test_bad_argument_from_the_shell():
    proc = _run("demo", "--missing-rate", "1.5", timeout=60)
    assert proc.returncode == 2
    assert "missing rate must be in [0, 1)" in proc.stderr
    assert proc.stdout == ""


def test_help_states_the_measured_time(capsys):
    with pytest.raises(SystemExit) as info:
        main(["demo", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "2-core" in out and "--smoke" in out
