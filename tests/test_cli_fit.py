"""``pyro-msm fit TABLE``: every output written, bad input refused clearly."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pyro_msm.cli import main
from pyro_msm.datasets import table_path

AIR = table_path("airquality.csv")


def test_fit_gaussian_writes_every_output_in_original_units(tmp_path, capsys):
    out = tmp_path / "air"
    before = AIR.read_bytes()
    assert main(["fit", str(AIR), "--out", str(out), "--no-progress", "--draws", "50"]) == 0
    printed = capsys.readouterr().out
    assert "153 rows x 6 columns" in printed and "Ozone: 37 missing" in printed
    assert AIR.read_bytes() == before  # the input is never touched
    expected = {"summary.json", "parameters.json", "location.csv", "precision.csv",
                "imputer.pkl", "imputed.csv", "imputations.nc"}  # fmt: skip
    assert expected <= {p.name for p in out.iterdir()}
    source = pd.read_csv(AIR)
    imputed = pd.read_csv(out / "imputed.csv")
    assert list(imputed.columns) == list(source.columns) and not imputed.isna().any().any()
    observed = source.notna().to_numpy()
    assert np.array_equal(imputed.to_numpy()[observed], source.to_numpy(float)[observed])
    # imputations are in original units: ozone (ppb) gaps filled near the ozone scale
    gaps = imputed.loc[source["Ozone"].isna(), "Ozone"]
    assert 0.2 * source["Ozone"].mean() < gaps.mean() < 2 * source["Ozone"].mean()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["missing_per_column"]["Ozone"] == 37 and summary["estimator"] == "exact"
    assert "shrinkage" in summary["diagnostics"] and expected <= set(summary["files"])
    # the selection's evidence is recorded: the fold penalty and the test against mean imputation
    diag = summary["diagnostics"]
    assert {"cv_shrinkage", "validation_z", "validation_threshold", "alpha"} <= set(diag)
    assert diag["alpha"] == 0.05
    assert diag["cv_shrinkage"] == "inf" or diag["cv_shrinkage"] > 0
    precision = pd.read_csv(out / "precision.csv", index_col=0)
    assert list(precision.index) == list(source.columns)
    assert np.allclose(precision.to_numpy(), precision.to_numpy().T)
    import arviz as az

    idata = az.from_netcdf(out / "imputations.nc")
    assert list(idata.posterior["feature"].values) == list(source.columns)
    ozone = idata.posterior["x"].sel(feature="Ozone").values
    assert abs(ozone.mean() - imputed["Ozone"].mean()) < 0.1 * source["Ozone"].std()
    assert idata.attrs["units"] == "original"
    from pyro_msm import ScoreMatchingImputer

    reloaded = ScoreMatchingImputer.load(out / "imputer.pkl")
    assert np.allclose(reloaded.transform(source), imputed.to_numpy())
    # a second run refuses to replace the files unless --force
    assert main(["fit", str(AIR), "--out", str(out), "--no-progress"]) == 2
    assert "--force" in capsys.readouterr().err


def test_fit_mlp_and_graph_smoke(tmp_path):
    small = tmp_path / "small.csv"
    pd.read_csv(AIR)[["Ozone", "Wind", "Temp"]].head(60).to_csv(small, index=False)
    out = tmp_path / "mlp"
    args = ["--no-progress", "--steps", "3", "--draws", "5", "--num-particles", "4"]
    assert main(["fit", str(small), "--model", "mlp", "--out", str(out), *args]) == 0
    assert {"energy.pt", "imputed.csv", "imputations.nc", "summary.json"} <= {
        p.name for p in out.iterdir()
    }
    # a held-out share of the rows stops a flexible energy early (issue 12's guard)
    summary = json.loads((out / "summary.json").read_text())
    text = json.dumps(summary)
    assert "held_out_best_step" in text and "steps_run" in text
    out = tmp_path / "graph"
    assert main(["fit", str(small), "--model", "graph", "--estimator", "iw", "--out", str(out),
                 *args]) == 0  # fmt: skip
    names = {p.name for p in out.iterdir()}
    expected = {"edges.csv", "adjacency.csv", "precision.csv", "imputed.csv", "graph.png"}
    assert expected | {"path.png"} <= names
    adjacency = pd.read_csv(out / "adjacency.csv", index_col=0)
    assert list(adjacency.columns) == ["Ozone", "Wind", "Temp"]
    edges = pd.read_csv(out / "edges.csv")
    assert set(edges.columns) == {"source", "target", "precision", "partial_correlation"}
    assert len(edges) == int(np.triu(adjacency.to_numpy(), 1).sum())


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda d: d / "nope.csv", "no such file"),
        (lambda d: d, "directory"),
        (lambda d: _write(d / "t.xlsx", "a,b\n1,2\n"), "unknown file type"),
        (lambda d: _write(d / "t.csv", "a,city\n1,x\n2,y\n3,z\n"), "'city'"),
        (lambda d: _write(d / "t.parquet", "not parquet"), "cannot read"),
        (lambda d: _write(d / "t.csv", "a\n1\n"), "1 rows"),
    ],
)
def test_bad_tables_are_refused_clearly(tmp_path, capsys, setup, message):
    path = setup(tmp_path)
    assert main(["fit", str(path), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "pyro-msm fit: error:" in err and message in err and "Traceback" not in err


def test_missing_markers_columns_and_input_protection(tmp_path, capsys):
    path = _write(tmp_path / "t.csv", "a,b,note\n1,-99,x\n2,3,y\n3,4,z\n5,6,w\n4,2,v\n")
    out = tmp_path / "o"
    assert main(["fit", str(path), "--columns", "a,b", "--missing", "-99", "--out", str(out),
                 "--no-progress", "--draws", "5"]) == 0  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    assert summary["missing_per_column"] == {"a": 0, "b": 1}
    assert main(["fit", str(path), "--columns", "a,zz", "--out", str(tmp_path / "p")]) == 2
    assert "'zz'" in capsys.readouterr().err
    # an output name that is the input itself is refused even with --force
    clash = _write(tmp_path / "imputed.csv", "a,b\n1,2\n3,4\n5,6\n")
    assert main(["fit", str(clash), "--out", str(tmp_path), "--force"]) == 2
    assert "overwrite the input" in capsys.readouterr().err


def _write(path, text: str):
    path.write_text(text)
    return path
