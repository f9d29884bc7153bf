"""Data parallelism: 2 gloo ranks under DistributedDataParallel make the same fit as 1 process
with the same global batch and seed (MissingScoreMatching(data_parallel=True))."""

import os
import socket

import pyro
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from pyro_msm import MissingScoreMatching
from pyro_msm.guides import GaussianConditionalGuide
from pyro_msm.modules import GaussianModel

STEPS = 50
#: parameters after 50 steps agree to this (float64; only the summation order differs)
TOLERANCE = 1e-9


def _table():
    g = torch.Generator().manual_seed(0)
    a = torch.tensor([[1.0, 0.0, 0.0], [0.6, 1.0, 0.0], [0.0, -0.5, 0.8]], dtype=torch.float64)
    x = torch.randn(120, 3, generator=g, dtype=torch.float64) @ a.T
    x[torch.rand(120, 3, generator=g) < 0.3] = float("nan")
    return x


def _fit(estimator: str, distributed: bool) -> dict[str, torch.Tensor]:
    pyro.clear_param_store()
    torch.manual_seed(1)
    x = _table()
    model = GaussianModel(3, dtype=torch.float64)
    guide = GaussianConditionalGuide(model) if estimator == "variational" else None
    loss = MissingScoreMatching(estimator, 5, data_parallel=True, health=False)
    module = loss(model, guide if guide is not None else (lambda *a, **k: None))
    module(x)  # build the guide's parameters before wrapping
    net = DistributedDataParallel(module) if distributed else module
    optim = torch.optim.Adam(net.parameters(), lr=0.02)
    for _ in range(STEPS):
        optim.zero_grad()
        net(x).backward()
        optim.step()
    params = {n: p.detach().clone() for n, p in module.named_parameters()}
    # rows this rank scored in the last step (its shard under DDP, all rows in one process)
    params["scored_rows"] = torch.tensor(loss._site_losses["x"].shape[0])
    return params


def _rank(rank: int, size: int, port: int, estimator: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=size)
    try:
        params = _fit(estimator, True)
        if rank == 0:
            torch.save(params, out)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("estimator", ["iw", "variational"])
def test_two_ranks_fit_what_one_process_fits(estimator, tmp_path):
    out = str(tmp_path / "params.pt")
    mp.spawn(_rank, args=(2, _free_port(), estimator, out), nprocs=2, join=True)
    two = torch.load(out)
    one = _fit(estimator, False)
    assert one.keys() == two.keys()
    assert int(one.pop("scored_rows")) == 120 and int(two.pop("scored_rows")) == 60
    start = GaussianModel(3, dtype=torch.float64)
    assert not torch.allclose(one["model.loc_unconstrained"], start.loc.detach())  # it moved
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=TOLERANCE, atol=TOLERANCE)


def test_data_parallel_is_a_no_op_in_one_process():
    x = _table()
    model = GaussianModel(3, dtype=torch.float64)
    values = []
    for flag in (False, True):
        torch.manual_seed(3)
        loss = MissingScoreMatching("iw", 5, data_parallel=flag)(model, lambda *a, **k: None)
        values.append(loss(x))
    torch.testing.assert_close(values[0], values[1], rtol=0, atol=0)


def test_scaling_benchmark_smoke_runs_torchrun_with_one_and_two_ranks():
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "scaling.py"), "--smoke"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "speed-up 2 ranks / 1 rank" in done.stdout
