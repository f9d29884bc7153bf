"""The imputer benchmark's smoke run (so the script never rots) and what it must show."""

from __future__ import annotations

import importlib.util
import pathlib

import numpy as np


def _module():
    path = pathlib.Path(__file__).parents[1] / "benchmarks" / "imputer.py"
    spec = importlib.util.spec_from_file_location("bench_imputer", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_imputer_benchmark_smoke(capsys):
    summary = _module().main(["--smoke", "--count-evaluations"])
    out = capsys.readouterr().out
    assert "rmse_score_matching" in out and "total:" in out
    assert set(summary.index) >= {"airquality", "bfi", "truncated_gaussian", "interaction"}
    # never worse than mean imputation (a little slack for one small mask)
    assert np.all(summary["sm_over_mean"] <= 1.05)
    assert np.all(np.isfinite(summary["cov90_sm"]))
    # every fit evaluated the loss (the validation fits at least)
    assert np.all(summary["evals_sm"] > 0)


def test_selection_simulation_smoke():
    # strong correlation is always detected (with either standard error); the plain rule
    # departs whenever the widened one does
    rows = _module().main(
        ["--selection-simulation", "1", "--families", "gaussian,rho=0.6", "--sizes", "120"]
    )
    assert list(rows["family"]) == ["gaussian", "rho=0.6"]
    strong = rows[rows["family"] == "rho=0.6"].iloc[0]
    assert strong["left"] and strong["left_plain"] and strong["ratio"] < 1
    assert np.all(rows["left_plain"] | ~rows["left"])
