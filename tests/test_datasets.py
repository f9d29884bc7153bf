"""Bundled data sets load offline with the documented shapes; the graph experiments run end to
end on them at toy sizes."""

from __future__ import annotations

import csv
import math
import socket
from importlib import resources

import pytest
import torch

from pyro_msm.datasets import SACHS_COLUMNS, load_sachs, load_tissue_gene_expression


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a data loader tried to open a network connection")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_sachs_loads_offline(no_network):
    data = load_sachs()
    assert data.x.shape == (7466, 11) and data.x.dtype == torch.float64
    assert data.columns == SACHS_COLUMNS
    assert bool((data.x > 0).all())  # raw intensities
    assert len(data.edges) == 18
    assert all(cause in SACHS_COLUMNS and effect in SACHS_COLUMNS for cause, effect in data.edges)
    adjacency = data.adjacency
    assert (adjacency == adjacency.T).all() and not adjacency.diagonal().any()
    assert int(torch.triu(adjacency, 1).sum()) == 18  # 18 distinct undirected pairs
    i, j = SACHS_COLUMNS.index("praf"), SACHS_COLUMNS.index("pmek")
    assert bool(adjacency[i, j])  # Raf -> Mek, the textbook edge
    logged = load_sachs(log=True, dtype=torch.float32)
    assert logged.x.dtype == torch.float32
    assert torch.allclose(logged.x.double(), data.x.log(), atol=1e-5)


def test_sachs_file_is_the_cdt_table():
    """First data row as in cdt's cyto_full_data.csv."""
    data = load_sachs()
    first = [26.4, 13.2, 8.82, 18.3, 58.8, 6.61, 17.0, 414.0, 17.0, 44.9, 40.0]
    assert data.x[0].tolist() == first


def test_tissue_gene_expression_loads_offline(no_network):
    data = load_tissue_gene_expression()
    assert data.x.shape == (189, 500)
    assert len(data.genes) == 500 and len(set(data.genes)) == 500
    assert len(data.tissues) == len(data.samples) == 189
    counts = {t: data.tissues.count(t) for t in set(data.tissues)}
    assert counts == {
        "cerebellum": 38, "colon": 34, "endometrium": 15, "hippocampus": 31,
        "kidney": 39, "liver": 26, "placenta": 6,
    }  # fmt: skip
    assert all(s.startswith(t) for s, t in zip(data.samples, data.tissues, strict=True))
    assert bool(torch.isfinite(data.x).all())
    top, genes = data.top_variance(10)
    variances = top.var(0)
    assert top.shape == (189, 10) and (variances[:-1] >= variances[1:]).all()
    assert float(variances[-1]) >= float(data.x.var(0).sort(descending=True).values[9]) - 1e-12
    assert genes[0] == data.genes[int(data.x.var(0).argmax())]
    with pytest.raises(ValueError, match="k must be"):
        data.top_variance(0)


def test_data_files_and_attribution_are_packaged():
    folder = resources.files("pyro_msm.datasets").joinpath("data")
    names = {p.name for p in folder.iterdir()}
    assert {"sachs_cyto_full_data.csv.gz", "sachs_consensus_edges.csv", "README.md"} <= names
    assert "tissue_gene_expression.csv.gz" in names
    readme = folder.joinpath("README.md").read_text()
    for needed in ("Sachs", "Science", "Artistic", "MIT", "cdt", "dslabs"):
        assert needed in readme
    assert sum(len(folder.joinpath(n).read_bytes()) for n in names) < 3_000_000  # a few MB
    with folder.joinpath("sachs_consensus_edges.csv").open() as handle:
        assert next(csv.reader(handle)) == ["Cause", "Effect"]


# --------------------------------------------------------------------------------------------------
# the experiments, at toy sizes
# --------------------------------------------------------------------------------------------------

TOY = dict(num_penalties=4, warmup_steps=5, steps_per_penalty=2, guide_steps=1,
           baseline_penalties=4)  # fmt: skip


def test_graph_experiment_rows_and_plot(tmp_path):
    from pyro_msm.experiments.graphs import (
        GraphConfig,
        graph_missing_rates,
        plot_star_missing_rates,
        write_csv,
    )

    rows = graph_missing_rates(
        "star", d=5, n=120, missing_rates=(0.3,), methods=("zeroed", "mean_glasso"),
        config=GraphConfig(**TOY), progress=False, extra_edges=1,
    )  # fmt: skip
    assert [r["method"] for r in rows] == ["zeroed", "mean_glasso"]
    for r in rows:
        assert 0.0 <= r["auc"] <= 1.0 and r["true_edges"] == 5 and r["missing_rate"] == 0.3
        assert {"f1", "mcc", "fisher", "stein", "frobenius", "seed", "setting"} <= set(r)
    plot_star_missing_rates(rows, str(tmp_path / "star.png"))
    write_csv(rows, str(tmp_path / "star.csv"))
    assert (tmp_path / "star.png").stat().st_size > 1000
    with open(tmp_path / "star.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 2


def test_real_data_protocol_on_sachs(tmp_path):
    from pyro_msm.experiments.graphs import (
        GraphConfig,
        plot_sachs,
        real_data_protocol,
        reference_graphs,
        standardise,
    )

    data = load_sachs(log=True)
    refs = reference_graphs(standardise(data.x))
    assert [r["density"] for r in refs] == [0.05, 0.10, 0.15, 0.20, 0.25]
    edges = [r["num_edges"] for r in refs]
    assert edges == sorted(edges) and edges[0] >= 1
    for r in refs:  # the closest density on a fine path: within one edge of the target
        assert abs(r["realised_density"] - r["density"]) <= 1.5 / 55
    rows = real_data_protocol(
        data.x[:800], dataset="sachs", missing_rates=(0.3,), repetitions=1,
        methods=("zeroed",), config=GraphConfig(**TOY), progress=False,
        extra_references={"consensus": data.adjacency},
    )  # fmt: skip
    assert len(rows) == 6 and rows[-1]["reference"] == "consensus"
    assert [r["reference"] for r in rows[:2]] == ["density 0.05", "density 0.1"]
    assert rows[-1]["reference_edges"] == 18
    assert all(0.0 <= r["auc"] <= 1.0 and not math.isnan(r["auc"]) for r in rows)
    plot_sachs(rows, str(tmp_path / "sachs.png"))
    assert (tmp_path / "sachs.png").stat().st_size > 1000
