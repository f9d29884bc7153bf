"""Data parallelism: 2 gloo ranks under DistributedDataParallel make the same fit as 1 process
with the same global batch and seed (MissingScoreMatching(data_parallel=True))."""

import os

import pyro
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from pyro_msm import MissingScoreMatching
from pyro_msm.distributed import exit_rank, shutdown
from pyro_msm.guides import GaussianConditionalGuide
from pyro_msm.infer.proposals import (
    MomentMatchedProposal,
    PreparedProposal,
    Proposal,
    WideGaussianProposal,
)
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
    """``estimator`` is ``"iw"``, ``"variational"`` or ``"iw-sliced"`` (IW, sliced objective:
    its random directions are drawn inside the objective)."""
    pyro.clear_param_store()
    torch.manual_seed(1)
    x = _table()
    model = GaussianModel(3, dtype=torch.float64)
    guide = GaussianConditionalGuide(model) if estimator == "variational" else None
    estimator, _, objective = estimator.partition("-")
    loss = MissingScoreMatching(
        estimator, 5, objective=objective or "exact", data_parallel=True, health=False
    )
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
    if estimator == "iw":  # the whole batch's mean ESS, on every rank
        params["ess"] = torch.tensor(loss.diagnostics["ess"], dtype=torch.float64)
    return params


def _sharded(distributed: bool) -> dict[str, torch.Tensor]:
    """One step of data_parallel='sharded' on this rank's half of the table (the whole table in
    one process): what the loss fitted once per data set."""
    from pyro_msm.distributed import shard

    x = _table()
    local = shard(x) if distributed else x
    torch.manual_seed(5)
    model = GaussianModel(3, dtype=torch.float64)
    iw = MissingScoreMatching("iw", 5, data_parallel="sharded", health=False)
    iw(model, lambda *a, **k: None)(local)
    fitted, _ = iw.proposal.fitted["x"]
    mean_impute = MissingScoreMatching("mean_impute", data_parallel="sharded", health=False)
    module = mean_impute(model, lambda *a, **k: None)
    value_mi = module(local)
    value_mi.backward()
    return {
        "loc": fitted.loc,
        "covariance": fitted.covariance,
        "rows": torch.tensor(local.shape[0]),
        "ess": torch.tensor(iw.diagnostics["ess"], dtype=torch.float64),
        "iw_loss": torch.tensor(iw.diagnostics["loss"], dtype=torch.float64),
        "mean_impute_loss": torch.tensor(mean_impute.diagnostics["loss"], dtype=torch.float64),
        "mean_impute_grad": model.loc_unconstrained.grad.clone(),
    }


def _rank(rank: int, size: int, init_method: str, estimator: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=size)
    try:
        if estimator == "sharded":
            params = _sharded(True)
            gathered = [None] * size
            dist.all_gather_object(gathered, params)
            params = {"per_rank": gathered}
        else:
            params = _fit(estimator, True)
        if rank == 0:
            torch.save(params, out)
    finally:
        shutdown()
    exit_rank(0)  # reached only on success: an exception still reaches spawn with its traceback


def _rendezvous(tmp_path) -> str:
    """A file rendezvous for the spawned ranks: no TCP port to race other processes for."""
    return f"file://{tmp_path / 'rendezvous'}"


@pytest.mark.parametrize("estimator", ["iw", "variational", "iw-sliced"])
def test_two_ranks_fit_what_one_process_fits(estimator, tmp_path):
    out = str(tmp_path / "params.pt")
    mp.spawn(_rank, args=(2, _rendezvous(tmp_path), estimator, out), nprocs=2, join=True)
    two = torch.load(out)
    one = _fit(estimator, False)
    assert one.keys() == two.keys()
    assert int(one.pop("scored_rows")) == 120 and int(two.pop("scored_rows")) == 60
    start = GaussianModel(3, dtype=torch.float64)
    assert not torch.allclose(one["model.loc_unconstrained"], start.loc.detach())  # it moved
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=TOLERANCE, atol=TOLERANCE)


def test_sharded_ranks_fit_the_proposal_of_the_whole_table(tmp_path):
    """data_parallel='sharded': each rank holds half of the table; the moment-matched proposal
    is fitted on both halves (statistics all-reduced) and equals the single-process fit on the
    whole table; mean imputation's column means are the whole table's (the summed gradients of
    the two ranks' losses are the whole table's, which differ if each rank used its own means);
    the reported loss and ESS are the same on both ranks."""
    out = str(tmp_path / "sharded.pt")
    mp.spawn(_rank, args=(2, _rendezvous(tmp_path), "sharded", out), nprocs=2, join=True)
    ranks = torch.load(out)["per_rank"]
    one = _sharded(False)
    assert [int(r["rows"]) for r in ranks] == [60, 60]
    x = _table()
    halves = [MomentMatchedProposal().proposal_for(h, ~torch.isnan(h)) for h in x.split(60)]
    assert not torch.allclose(halves[0].covariance, one["covariance"], atol=1e-3)  # it matters
    for r in ranks:
        torch.testing.assert_close(r["loc"], one["loc"], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(r["covariance"], one["covariance"], rtol=1e-10, atol=1e-12)
    for key in ("ess", "iw_loss", "mean_impute_loss"):  # the same reported value on every rank
        assert float(ranks[0][key]) == float(ranks[1][key]), key
    # a mean-imputed loss is a sum over rows: the two halves' gradients sum to the whole
    # table's when the imputed means are the whole table's
    total = ranks[0]["mean_impute_grad"] + ranks[1]["mean_impute_grad"]
    torch.testing.assert_close(total, one["mean_impute_grad"], rtol=1e-10, atol=1e-12)


def test_a_gaussian_proposal_draws_a_subset_of_rows_with_the_whole_tables_numbers():
    """prepare(rows=...) and sample(rows, r, keep): the kept rows' draws and log densities are
    those of drawing every row with the same seed (what replicated data parallelism relies
    on), with the factors of the kept rows' patterns only."""
    from pyro_msm.infer.proposals import GaussianConditionalProposal

    x = _table()
    mask = ~torch.isnan(x)
    x = torch.nan_to_num(x)
    proposal = GaussianConditionalProposal.fit(x, mask)
    rows = torch.arange(10, 100)
    torch.manual_seed(7)
    draws, log_p = proposal.prepare(x, mask).sample(rows, 4)
    after_all = torch.rand(3)
    keep = torch.tensor([30, 31, 33])
    own = rows[keep]
    prepared = proposal.prepare(x, mask, rows=own)
    assert prepared.factors.shape[0] < len(torch.unique(mask, dim=0))  # only own patterns
    torch.manual_seed(7)
    sub_draws, sub_log_p = prepared.sample(rows, 4, keep)
    torch.testing.assert_close(sub_draws, draws[:, keep], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sub_log_p, log_p[:, keep], rtol=1e-12, atol=1e-12)
    assert torch.equal(torch.rand(3), after_all)  # the same random stream consumed


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
    assert done.returncode == 0, done.stderr[-6000:]  # ends with every rank's own output
    assert "speed-up 2 ranks / 1 rank" in done.stdout


class _OldStyleProposal(Proposal):
    """A proposal written before the data-parallel keywords of prepare() and sample()."""

    def __init__(self) -> None:
        self.inner = WideGaussianProposal(3.0)

    def sample(self, x, mask, num_particles):
        return self.inner.sample(x, mask, num_particles)

    def prepare(self, x, mask, *, site="", subsampled=False):
        return _OldStylePrepared(self, x, mask)


class _OldStylePrepared(PreparedProposal):
    def sample(self, rows, num_particles):
        return self.proposal.sample(self.x[rows], self.mask[rows], num_particles)


@pytest.mark.parametrize("proposal", ["moment_matched", "old_style"])
def test_rank_zero_scores_its_rows_as_one_process_does(proposal, monkeypatch):
    """Replicated data parallelism seen from rank 0 of 2 in one process (the collectives made
    identities): its per-row losses are a single process's losses of its rows, bit for bit up
    to rounding, with the default proposal (which factors and draws only rank 0's rows) and with
    a proposal written before the data-parallel keywords (which draws every row)."""
    from pyro_msm import distributed

    x = _table()
    # a precision linking the coordinates, so the observed scores depend on the draws
    precision = torch.tensor([[2.0, 0.8, 0.3], [0.8, 1.5, -0.6], [0.3, -0.6, 1.2]])
    model = GaussianModel(3, precision=precision, dtype=torch.float64)

    def losses(rank_zero: bool) -> torch.Tensor:
        made = _OldStyleProposal() if proposal == "old_style" else proposal
        loss = MissingScoreMatching("iw", 5, proposal=made, data_parallel=True, health=False)
        torch.manual_seed(11)
        with monkeypatch.context() as m:
            if rank_zero:
                m.setattr(distributed, "is_distributed", lambda: True)
                m.setattr(distributed, "world", lambda: distributed.World(0, 2))
                m.setattr(dist, "all_reduce", lambda tensor, op=None: tensor)
            loss(model, lambda *a, **k: None)(x)
        return loss._site_losses["x"], loss._split_rows(~torch.isnan(x))

    one, (complete, partial) = losses(False)
    mine, _ = losses(True)
    # rows are scored group by group: the complete rows, then the partial ones
    order = torch.cat([complete, partial])
    want = one[order < 60]
    assert mine.shape == want.shape == (int((order < 60).sum()),)
    torch.testing.assert_close(mine, want, rtol=1e-12, atol=1e-12)


def test_shutdown_without_a_process_group_does_nothing():
    assert not dist.is_initialized()
    shutdown()
    assert not dist.is_initialized()


def test_exit_rank_flushes_and_exits_with_the_code(tmp_path):
    """exit_rank ends the process with the given status after flushing what was printed,
    and skips atexit handlers (the interpreter's teardown)."""
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "rank.py"
    script.write_text(
        "import atexit, sys\n"
        "from pyro_msm.distributed import exit_rank\n"
        "atexit.register(lambda: print('teardown ran'))\n"
        "print('work done', end='')\n"
        "print('to stderr', file=sys.stderr, end='')\n"
        "exit_rank(3)\n"
    )
    root = str(Path(__file__).resolve().parents[1])
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": root},
    )  # fmt: skip
    assert done.returncode == 3
    assert done.stdout == "work done" and done.stderr == "to stderr"
