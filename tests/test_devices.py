"""Device and dtype discipline (issue 13): every loss, guide, proposal and graph solver follows
the data's device and dtype.

This machine has no GPU, so a hard-coded device is caught another way: the code runs on CPU
data inside ``torch.device("meta")`` (the default device for every factory call that names no
device). A tensor created without following the data (``torch.zeros(d)``, ``torch.tensor(2.0)``,
``torch.eye(d)``, ``torch.randn(...)``) then lands on the meta device, and mixing it with the
CPU data raises ("Tensor on device meta is not on the expected device cpu"), even for 0-d
tensors, which CUDA would let through. The dtype twin: float32 data run with float64 as the
default dtype, so a tensor created without the data's dtype is float64 and promotes the result;
the results must stay float32 (and float64 data give float64).

A CPU round trip inside a step (``.item()``, ``.tolist()``, ``float(tensor)``, ``.cpu()``,
``.numpy()``) is a device synchronisation on a GPU; the last test counts them in one SVI step.
"""

from __future__ import annotations

import contextlib

import pyro
import pytest
import torch
from pyro.distributions import MultivariateNormal, Normal

from pyro_msm import MissingScoreMatching
from pyro_msm.guides import AmortizedFlow, AmortizedNormal, GaussianConditionalGuide, no_guide
from pyro_msm.infer.proposals import DistributionProposal, MomentMatchedProposal, make_proposal
from pyro_msm.modules import GaussianModel, MLPModel

ESTIMATORS = ["iw", "variational", "hybrid", "em", "zeroed", "mean_impute", "complete_case"]
OBJECTIVES = ["exact", "sliced", "denoising", "truncated"]


def _table(dtype: torch.dtype, n: int = 30, d: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g, dtype=torch.float64).to(dtype)
    x[torch.rand(n, d, generator=g) < 0.3] = float("nan")
    x[0] = 0.5  # one complete row
    return x


@contextlib.contextmanager
def foreign_defaults(dtype: torch.dtype):
    """Default device meta and default dtype ``dtype`` (restored afterwards)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device("meta"):
            yield
    finally:
        torch.set_default_dtype(old)


def _other(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float32 else torch.float32


def test_the_mechanism_catches_a_hard_coded_device_and_dtype():
    """The trap fires for the mistakes it is meant to catch (a test that cannot fail is none)."""
    x = torch.ones(3, dtype=torch.float32)
    with foreign_defaults(torch.float64):
        with pytest.raises(RuntimeError, match="meta"):
            x + torch.zeros(())
        with pytest.raises(RuntimeError, match="meta"):
            x * torch.tensor(2.0)
        assert (x + x.new_zeros(())).dtype == torch.float32  # following the data is fine
    y = x + torch.zeros((), dtype=torch.float64)  # what an unfollowed dtype does
    assert y.dtype == torch.float32  # 0-d tensors do not promote ...
    assert (x + torch.zeros(3, dtype=torch.float64)).dtype == torch.float64  # ... others do


def _guide(kind: str, model, d: int):
    if kind == "gaussian":
        return GaussianConditionalGuide(model)
    if kind == "amortized":
        return AmortizedNormal(model, hidden_dims=(8,))
    return AmortizedFlow(model)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_every_loss_follows_the_data(estimator, objective, dtype):
    pyro.clear_param_store()
    torch.manual_seed(0)
    x = _table(dtype)
    model = GaussianModel(3, dtype=dtype)
    guide = GaussianConditionalGuide(model) if estimator in ("variational", "hybrid") else None
    loss = MissingScoreMatching(estimator, 4, objective=objective, health=False)
    module = loss(model, guide if guide is not None else no_guide)
    with foreign_defaults(_other(dtype)):  # the first call fits proposals and builds guides
        for _ in range(2):
            value = module(x)
            value.backward()
    assert value.device.type == "cpu" and value.dtype == dtype
    for name, p in module.named_parameters():
        assert p.device.type == "cpu" and p.dtype == dtype, name
        assert p.grad is not None and p.grad.dtype == dtype, name


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_closed_form_and_the_neural_energy_follow_the_data(dtype):
    pyro.clear_param_store()
    x = _table(dtype)
    gaussian = GaussianModel(3, dtype=dtype)
    mlp = MLPModel(3, hidden_dims=(8,)).to(dtype)
    for model, estimator in [(gaussian, "closed_form"), (mlp, "iw"), (mlp, "mean_impute")]:
        module = MissingScoreMatching(estimator, 4, health=False)(model, no_guide)
        with foreign_defaults(_other(dtype)):
            value = module(x)
            value.backward()
        assert value.device.type == "cpu" and value.dtype == dtype


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", ["gaussian", "amortized", "flow"])
def test_guides_follow_the_data(kind, dtype):
    pyro.clear_param_store()
    torch.manual_seed(0)
    x = _table(dtype)
    model = GaussianModel(3, dtype=dtype)
    guide = _guide(kind, model, 3)
    if kind != "gaussian":
        guide = guide.to(dtype)
    module = MissingScoreMatching("variational", 3, health=False)(model, guide)
    with foreign_defaults(_other(dtype)):
        value = module(x)
        value.backward()
    assert value.dtype == dtype
    for name, p in module.named_parameters():
        assert p.device.type == "cpu" and p.dtype == dtype, name


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_proposals_follow_the_data(dtype):
    x = torch.nan_to_num(_table(dtype))
    mask = ~torch.isnan(_table(dtype))
    proposals = [
        make_proposal("moment_matched"),
        make_proposal("wide"),
        MomentMatchedProposal().fit(_table(dtype)),
        DistributionProposal(Normal(torch.zeros(3, dtype=dtype), 2.0).to_event(1)),
        DistributionProposal(
            MultivariateNormal(torch.zeros(3, dtype=dtype), torch.eye(3, dtype=dtype))
        ),
    ]
    for proposal in proposals:
        with foreign_defaults(_other(dtype)):
            draws, log_p = proposal.sample(x, mask, 5)
        assert draws.device.type == "cpu" and draws.dtype == dtype, proposal
        assert log_p.device.type == "cpu" and log_p.dtype == dtype, proposal
        assert draws.shape == (5,) + x.shape and log_p.shape == (5, x.shape[0])
        assert bool(torch.isfinite(log_p).all())


def test_graph_solvers_follow_the_data():
    """The exact imputed, EM and marginal paths, the quadratic solver and the estimator with its
    default grid and selection, on CPU float64 data under meta/float32 defaults."""
    from pyro_msm.graphical import (
        GraphicalScoreMatching,
        em_path,
        imputed_path,
        marginal_path,
        quadratic_path,
        sample_covariance,
    )

    g = torch.Generator().manual_seed(1)
    x = torch.randn(60, 4, generator=g, dtype=torch.float64)
    x[torch.rand(60, 4, generator=g) < 0.2] = float("nan")
    grid = [0.5, 0.1]
    with foreign_defaults(torch.float32):
        paths = [em_path(x, penalties=grid), marginal_path(x, penalties=grid)]
        paths.append(em_path(x, num_penalties=3))  # the default grid
        paths += [imputed_path(x, penalties=grid), imputed_path(x, num_penalties=3)]
        precisions, _ = quadratic_path(sample_covariance(torch.nan_to_num(x)), grid)
        fitted = GraphicalScoreMatching(num_penalties=4, progress=False).fit(x)
    assert fitted.precision_.device.type == "cpu" and fitted.precision_.dtype == torch.float64
    for path in paths:
        assert path.precisions.device.type == "cpu" and path.precisions.dtype == torch.float64
        assert bool(torch.isfinite(path.precisions).all())
    assert precisions.device.type == "cpu" and precisions.dtype == torch.float64


def test_streamed_statistics_follow_the_data():
    from pyro_msm.infer.gaussian import pairwise_moments
    from pyro_msm.streaming import MomentAccumulator

    x = _table(torch.float64, n=50, d=4)
    with foreign_defaults(torch.float32):
        acc = MomentAccumulator(4).update(x[:20]).update(x[20:])
        loc, cov = acc.moments(dtype=torch.float64)
    assert loc.device.type == "cpu" and cov.dtype == torch.float64
    want_loc, want_cov = pairwise_moments(torch.nan_to_num(x), ~torch.isnan(x))
    torch.testing.assert_close(loc, want_loc, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(cov, want_cov, rtol=1e-10, atol=1e-10)


READS = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__")


@pytest.mark.parametrize("estimator, allowed", [("iw", 1), ("variational", 1), ("em", 1)])
def test_a_step_reads_the_device_once(estimator, allowed, monkeypatch):
    """Reads off the device (``.item()``, ``float(t)``, ``bool(t)``, ...) made by pyro_msm
    (the losses and :func:`~pyro_msm.observe`) in one SVI step after the first: the step's value,
    read once with the ESS, KL and row counts. observe()'s input checks and the row groups are
    computed once per data set, and a plate's scale is read from Pyro's number. (Pyro's and
    torch's own reads, and the opt-out health monitor's two, are counted apart.)"""
    import traceback

    pyro.clear_param_store()
    x = _table(torch.float32, n=60, d=4)
    model = GaussianModel(4)
    guide = GaussianConditionalGuide(model) if estimator == "variational" else no_guide
    loss = MissingScoreMatching(estimator, 4, guide_steps=0)  # health monitor on (default)
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), loss)
    svi.step(x)
    reads: list[str] = []

    def counting(name):
        method = getattr(torch.Tensor, name)

        def wrapped(self, *args, **kwargs):
            # the innermost caller outside torch: a read made by pyro_msm's own code, not
            # by Pyro's validation called from it
            stack = traceback.extract_stack()[:-1]
            here = [f for f in stack if "site-packages/torch" not in f.filename][-1:]
            if here and "pyro_msm" in here[-1].filename:
                reads.append(f"{name} at {here[-1].filename}:{here[-1].lineno}")
            return method(self, *args, **kwargs)

        return wrapped

    for name in READS:
        monkeypatch.setattr(torch.Tensor, name, counting(name))
    svi.step(x)
    monkeypatch.undo()
    health = [r for r in reads if "health.py" in r]  # the monitor's own checks, opt-out
    assert len(reads) - len(health) <= allowed, reads
    assert len(health) <= 2, health  # the ESS summary and the gradients' finiteness
