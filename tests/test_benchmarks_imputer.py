"""The imputer benchmark's smoke run (so the script never rots) and what it must show."""

from __future__ import annotations

import importlib.util
import pathlib

import numpy as np


def test_imputer_benchmark_smoke(capsys):
    path = pathlib.Path(__file__).parents[1] / "benchmarks" / "imputer.py"
    spec = importlib.util.spec_from_file_location("bench_imputer", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    summary = module.main(["--smoke"])
    assert "rmse_score_matching" in capsys.readouterr().out
    assert set(summary.index) >= {"airquality", "bfi", "truncated_gaussian", "interaction"}
    # never worse than mean imputation (a little slack for one small mask)
    assert np.all(summary["sm_over_mean"] <= 1.05)
    assert np.all(np.isfinite(summary["cov90_sm"]))
