"""Streaming tables from disk and the sufficient statistics summed over chunks and ranks."""

import os

import numpy as np
import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DataLoader

from pyro_msm import distributed
from pyro_msm.infer.gaussian import pairwise_moments
from pyro_msm.streaming import MomentAccumulator, TableStream, count_rows, read_chunks


def _table(n=1000, d=4, rate=0.3, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(d, d))
    x = rng.normal(size=(n, d)) @ a + 100.0  # a large mean tests the shifted accumulation
    x[rng.random((n, d)) < rate] = np.nan
    return pd.DataFrame(x, columns=[f"c{j}" for j in range(d)])


@pytest.fixture(scope="module")
def csv_and_parquet(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tables")
    df = _table()
    csv, pq = folder / "t.csv", folder / "t.parquet"
    df.to_csv(csv, index=False)
    df.to_parquet(pq, index=False)
    return df, csv, pq


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_chunks_reassemble_the_table(csv_and_parquet, kind):
    df, csv, pq = csv_and_parquet
    path = csv if kind == "csv" else pq
    chunks = list(read_chunks(path, chunk_size=128, dtype=torch.float64))
    assert [c.shape[0] for c in chunks[:-1]] == [128] * (len(chunks) - 1)
    whole = torch.cat(chunks)
    np.testing.assert_array_equal(whole.numpy(), df.to_numpy())
    assert count_rows(path) == len(df)


def test_moment_accumulator_equals_pairwise_moments_on_the_whole_table(csv_and_parquet):
    df, csv, _ = csv_and_parquet
    acc = MomentAccumulator(df.shape[1])
    for chunk in read_chunks(csv, chunk_size=97, dtype=torch.float64):
        acc.update(chunk)
    mean, cov = acc.moments(dtype=torch.float64)
    x = torch.tensor(df.to_numpy())
    ref_mean, ref_cov = pairwise_moments(torch.nan_to_num(x), ~torch.isnan(x))
    torch.testing.assert_close(mean, ref_mean, rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(cov, ref_cov, rtol=1e-9, atol=1e-9)
    assert acc.rows == len(df)


def test_table_stream_batches_cover_every_row_once(csv_and_parquet):
    df, _, pq = csv_and_parquet
    stream = TableStream(pq, batch_size=64, chunk_size=300, dtype=torch.float64, seed=1)
    batches = list(DataLoader(stream, batch_size=None))
    assert max(b.shape[0] for b in batches) == 64
    rows = torch.cat(batches)
    assert rows.shape == df.shape
    key = np.sort(np.nan_to_num(rows[:, 0].numpy(), nan=-1.0))
    np.testing.assert_array_equal(key, np.sort(np.nan_to_num(df["c0"].to_numpy(), nan=-1.0)))
    first = torch.cat(list(stream))
    stream.set_epoch(1)
    assert not torch.equal(first, torch.cat(list(stream)))  # a new order each epoch


def test_shard_bounds_partition():
    bounds = [distributed.shard_bounds(10, r, 3) for r in range(3)]
    assert bounds == [(0, 4), (4, 7), (7, 10)]
    assert distributed.world() == distributed.World(0, 1)
    with pytest.raises(ValueError, match="rank"):
        distributed.shard_bounds(10, 3, 3)


def _rendezvous(tmp_path) -> str:
    """A file rendezvous for the spawned ranks: no TCP port to race other processes for."""
    return f"file://{tmp_path / 'rendezvous'}"


def _rank_moments(rank: int, size: int, init_method: str, path: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=size)
    try:
        acc = MomentAccumulator(4)
        for chunk in read_chunks(path, chunk_size=97, dtype=torch.float64):
            acc.update(chunk)
        mean, cov = acc.all_reduce().moments(dtype=torch.float64)
        from pyro_msm.streaming import StreamedTable

        precision = torch.linalg.inv(cov)
        e_mean, e_gram = StreamedTable(path, chunk_size=97).expected_statistics(mean, precision)
        if rank == 0:
            torch.save(
                {"mean": mean, "cov": cov, "rows": acc.rows, "e_mean": e_mean, "e_gram": e_gram},
                out,
            )
    finally:
        distributed.shutdown()


def test_two_ranks_give_the_single_process_statistics(csv_and_parquet, tmp_path):
    df, csv, _ = csv_and_parquet
    out = str(tmp_path / "moments.pt")
    mp.spawn(_rank_moments, args=(2, _rendezvous(tmp_path), str(csv), out), nprocs=2, join=True)
    got = torch.load(out)
    x = torch.tensor(df.to_numpy())
    ref_mean, ref_cov = pairwise_moments(torch.nan_to_num(x), ~torch.isnan(x))
    assert got["rows"] == len(df)
    torch.testing.assert_close(got["mean"], ref_mean, rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(got["cov"], ref_cov, rtol=1e-9, atol=1e-9)
    # the EM statistics of the graph estimator, summed over the two ranks' chunks
    from pyro_msm.infer.gaussian import expected_statistics

    mask = ~torch.isnan(x)
    _, e_mean, e_gram = expected_statistics(
        torch.nan_to_num(x), mask, got["mean"], torch.linalg.inv(got["cov"])
    )
    torch.testing.assert_close(got["e_mean"], e_mean, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got["e_gram"], e_gram, rtol=1e-9, atol=1e-9)


def test_streamed_em_path_equals_the_in_memory_em_path(tmp_path):
    from pyro_msm.graphical import em_path
    from pyro_msm.graphical.generators import chain_graph, precision_from_graph
    from pyro_msm.streaming import StreamedTable, streamed_em_path

    d = 6
    precision = precision_from_graph(chain_graph(d), condition_number=5.0, seed=0)
    g = torch.Generator().manual_seed(0)
    chol = torch.linalg.cholesky(torch.linalg.inv(precision))
    x = torch.randn(600, d, generator=g, dtype=torch.float64) @ chol.T + 2.0
    x[torch.rand(600, d, generator=g) < 0.3] = float("nan")
    path = tmp_path / "table.csv"
    pd.DataFrame(x.numpy()).to_csv(path, index=False)
    streamed = streamed_em_path(StreamedTable(path, chunk_size=77), num_penalties=6)
    memory = em_path(x, num_penalties=6)
    torch.testing.assert_close(streamed.penalties, memory.penalties, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(streamed.precisions, memory.precisions, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(streamed.locs, memory.locs, rtol=1e-6, atol=1e-8)


#: peak resident memory of a process that streams a 10^6-row table (torch's import included)
STREAM_MEMORY_BOUND_MB = 1024

_STREAM_SCRIPT = """
import json, resource, sys
import torch


def peak_mb():
    # this process's own high-water mark (ru_maxrss would also count the pytest process it
    # was forked from, which Linux carries across exec)
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


from pyro_msm.streaming import StreamedTable, streamed_em_path
table = StreamedTable(sys.argv[1], chunk_size=100_000)
mean, cov = table.moments().moments(dtype=torch.float64)
path = streamed_em_path(table, penalties=[0.05], max_iter=3)
json.dump({"mean": mean.tolist(), "cov": cov.tolist(),
           "precision": path.precisions[0].tolist(), "loc": path.locs[0].tolist(),
           "peak_mb": peak_mb()},
          open(sys.argv[2], "w"))
"""


def test_a_million_row_csv_streams_in_bounded_memory_to_the_in_memory_fit(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    from pyro_msm.graphical import em_path

    rng = np.random.default_rng(0)
    n, d = 10**6, 4
    a = np.array([[1, 0, 0, 0], [0.5, 1, 0, 0], [0, -0.4, 1, 0], [0, 0, 0.3, 1]])
    csv = tmp_path / "million.csv"
    for start in range(0, n, 250_000):  # written in blocks; never committed
        x = rng.normal(size=(250_000, d)) @ a.T
        x[rng.random(x.shape) < 0.3] = np.nan
        pd.DataFrame(x, columns=[f"c{j}" for j in range(d)]).to_csv(
            csv, mode="a", header=start == 0, index=False, float_format="%.6g"
        )
    out = tmp_path / "streamed.json"
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", _STREAM_SCRIPT, str(csv), str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    streamed = json.loads(out.read_text())
    assert streamed["peak_mb"] < STREAM_MEMORY_BOUND_MB
    # the same rows in memory: the same moments and the same three EM iterations
    table = torch.tensor(pd.read_csv(csv).to_numpy())
    mask = ~torch.isnan(table)
    ref_mean, ref_cov = pairwise_moments(torch.nan_to_num(table), mask)
    torch.testing.assert_close(
        torch.tensor(streamed["mean"], dtype=torch.float64), ref_mean, rtol=1e-9, atol=1e-9
    )
    torch.testing.assert_close(
        torch.tensor(streamed["cov"], dtype=torch.float64), ref_cov, rtol=1e-8, atol=1e-8
    )
    memory = em_path(table, penalties=[0.05], max_iter=3)
    torch.testing.assert_close(
        torch.tensor(streamed["precision"], dtype=torch.float64),
        memory.precisions[0],
        rtol=1e-7,
        atol=1e-8,
    )
    torch.testing.assert_close(
        torch.tensor(streamed["loc"], dtype=torch.float64), memory.locs[0], rtol=1e-7, atol=1e-8
    )
