"""The per-step bookkeeping the losses skip or remember computes what the general path computes:
products with multipliers known to be one, the rows' constant scale, the row weights of a mask,
the fused gradient check, the single read of a step's value and the noise of one scale."""

from __future__ import annotations

import math
import warnings

import pyro
import pyro.poutine as poutine
import pytest
import torch
from builders import mcar
from pyro.distributions import constraints
from torch.overrides import TorchFunctionMode

import pyro_msm
from pyro_msm.distributions import Energy, FunctionEnergy, GaussianEnergy
from pyro_msm.guides import AmortizedNormal, no_guide
from pyro_msm.infer import FitHealth, FitHealthError, MissingScoreMatching
from pyro_msm.infer import score_matching as sm
from pyro_msm.infer.health import _norms_finite
from pyro_msm.infer.objectives import DenoisingObjective
from pyro_msm.infer.sites import FillUnobserved, find_data_sites

D64 = torch.float64


class _CountProducts(TorchFunctionMode):
    """Counts tensor products."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in ("mul", "__mul__", "__rmul__"):
            self.count += 1
        return func(*args, **(kwargs or {}))


class _PositiveQuadratic(Energy):
    """A Gaussian energy on the positive orthant that scores any subset of rows."""

    support = constraints.independent(constraints.positive, 1)

    def __init__(self, loc: torch.Tensor, tril: torch.Tensor) -> None:
        super().__init__((loc.shape[-1],))
        self.loc, self.tril = loc, tril

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * ((x - self.loc) @ self.tril).square().sum(-1)


def _model(energy, scale: str, n: int):
    def model(x):
        if scale == "tensor":  # a multiplier Pyro records as a tensor
            context = poutine.scale(scale=torch.tensor(0.5, dtype=x.dtype))
        else:
            context = poutine.scale(scale=1.0)
        size = n // 2 if scale == "subsample" else None
        with context, pyro.plate("rows", n, subsample_size=size) as idx:
            pyro_msm.observe("x", energy(), obs=x[idx])

    return model


@pytest.mark.parametrize("scale", ["one", "subsample", "tensor"])
@pytest.mark.parametrize(
    "estimator, objective, energy",
    [
        ("iw", "exact", "mlp"),
        ("iw", "denoising", "mlp"),
        ("em", "exact", "gaussian"),
        ("variational", "exact", "gaussian"),
        ("hybrid", "exact", "mlp"),
        ("zeroed", "exact", "gaussian"),
        ("iw", "truncated", "truncated"),
    ],
)
def test_skipped_unit_products_equal_the_general_path(
    monkeypatch, scale, estimator, objective, energy
):
    """The loss skips its products with the rows' scale when Pyro recorded the number one, with
    the row weights of rows that have an observed entry (unless draws fell outside the support:
    the truncated case), and with the number of ranks in one process. Against the general path
    (every product taken: the scale as a tensor, no group known to have observed rows), the
    loss and every gradient are equal bit for bit in float64, with rows that have nothing
    observed, subsampled plates and tensor scales; fewer products are taken only where a
    multiplier is one."""
    torch.manual_seed(0)
    n, d = 24, 4
    x = mcar(torch.randn(n, d, dtype=D64).abs() + 0.1, 0.3, keep_one=False)
    x[0] = math.nan  # a row with nothing observed (row weight zero)
    net = torch.nn.Sequential(
        torch.nn.Linear(d, 8), torch.nn.Softplus(), torch.nn.Linear(8, 1)
    ).double()
    loc = torch.zeros(d, dtype=D64, requires_grad=True)
    tril = (torch.eye(d, dtype=D64) + 0.1 * torch.ones(d, d, dtype=D64).tril(-1)).requires_grad_()
    energies = {
        "mlp": lambda: FunctionEnergy(net, d),
        "gaussian": lambda: GaussianEnergy(loc, precision_tril=tril),
        "truncated": lambda: _PositiveQuadratic(loc, tril),
    }
    params = [loc, tril, *net.parameters()]
    model = _model(energies[energy], scale, n)
    find = sm.find_data_sites

    def general_sites(trace):
        sites = find(trace)
        for site in sites:
            site.constant_scale = None  # the scale is multiplied as a tensor
        return sites

    class GeneralGroup(sm._Group):
        def __init__(self, *args, **kwargs):
            kwargs["observed_rows"] = False
            super().__init__(*args, **kwargs)

    out = []
    for general in (False, True):
        with monkeypatch.context() as patch:
            if general:
                patch.setattr(sm, "find_data_sites", general_sites)
                patch.setattr(sm, "_Group", GeneralGroup)
            pyro.clear_param_store()
            torch.manual_seed(1)
            guide = no_guide
            if estimator in ("variational", "hybrid"):
                guide = AmortizedNormal(model, hidden_dims=(8,)).double()
            # the wide proposal puts every draw of some rows outside the truncated support
            proposal = "wide" if objective == "truncated" else "moment_matched"
            loss = MissingScoreMatching(estimator, 3, objective=objective, proposal=proposal)
            for p in params:
                p.grad = None
            with warnings.catch_warnings(), _CountProducts() as products:
                warnings.simplefilter("ignore")  # the row with nothing observed
                values = [loss.loss_and_grads(model, guide, x) for _ in range(2)]
            grads = [None if p.grad is None else p.grad.clone() for p in params]
            out.append((values, grads, products.count))
    (v0, g0, c0), (v1, g1, c1) = out
    assert v0 == v1
    for a, b in zip(g0, g1, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            assert torch.equal(a, b)
    assert any(g is not None for g in g0)
    # a product is skipped where the scale is the number one, or for the row weights of groups
    # of rows with an observed entry (not "zeroed"'s single group of every row) without draws
    # outside the support (the truncated model's complete rows; its rows with missing entries,
    # some of whose draws all fell outside, keep the product: the values above tell)
    skips = scale == "one" or estimator != "zeroed"
    assert (c0 < c1) == skips and c0 <= c1


def test_constant_scale_is_one_tensor_per_value_rows_dtype_and_device():
    """A number Pyro records as the rows' scale becomes the ``(n,)`` tensor the general path
    built from it (``as_tensor(s).expand(n)``), made once: the same object at the next step,
    another for another number, number of rows or dtype; a tensor scale is its rows' values."""

    def trace_of(x, scale):
        def model():
            with poutine.scale(scale=scale), pyro.plate("rows", x.shape[0]):
                pyro_msm.observe("x", GaussianEnergy(torch.zeros(2, dtype=x.dtype),
                                                     torch.eye(2, dtype=x.dtype)), obs=x)

        return poutine.trace(FillUnobserved()(model)).get_trace()

    x = torch.randn(5, 2, dtype=D64)
    first = find_data_sites(trace_of(x, 2.0))[0]
    assert first.constant_scale == 2.0
    assert torch.equal(first.scale, torch.as_tensor(2.0, dtype=D64).expand(5))
    assert find_data_sites(trace_of(x, 2.0))[0].scale is first.scale
    for other in (
        find_data_sites(trace_of(x, 3.0))[0],
        find_data_sites(trace_of(x[:4], 2.0))[0],
        find_data_sites(trace_of(x.float(), 2.0))[0],
    ):
        assert other.scale is not first.scale
        assert torch.equal(other.scale, torch.full(other.scale.shape, other.constant_scale,
                                                   dtype=other.scale.dtype))
    assert find_data_sites(trace_of(x.float(), 2.0))[0].scale.dtype == torch.float32
    tensor = find_data_sites(trace_of(x, torch.tensor(0.25, dtype=D64)))[0]
    assert tensor.constant_scale is None
    assert torch.equal(tensor.scale, torch.full((5,), 0.25, dtype=D64))


def test_observed_row_weights_follow_the_mask():
    """The row weights of a mask (one for rows with an observed entry) are remembered per mask
    and dtype, and computed again for a mask modified in place or another mask."""
    mask = torch.tensor([[True, False], [False, False], [False, True]])
    w = sm._observed_row_weights(mask, D64)
    assert torch.equal(w, torch.tensor([1.0, 0.0, 1.0], dtype=D64))
    assert sm._observed_row_weights(mask, D64) is w
    assert sm._observed_row_weights(mask, torch.float32).dtype == torch.float32
    mask[1, 0] = True  # in place: a new version
    assert torch.equal(sm._observed_row_weights(mask, D64), torch.ones(3, dtype=D64))
    other = torch.zeros(3, 2, dtype=torch.bool)
    assert torch.equal(sm._observed_row_weights(other, D64), torch.zeros(3, dtype=D64))


def test_fused_gradient_check_finds_every_non_finite_gradient():
    """The per-gradient norms read together are finite exactly when every entry is, except that
    a norm may overflow for finite entries; the health monitor then checks each gradient, so it
    raises for a NaN or infinite entry only (also for mixed dtypes, through the total norm)."""
    grads = [torch.randn(3, 4), torch.randn(5)]
    assert _norms_finite(grads)
    for bad in (math.nan, math.inf, -math.inf):
        broken = [g.clone() for g in grads]
        broken[1][2] = bad
        assert not _norms_finite(broken)
        assert not _norms_finite([broken[1].double(), broken[0]])  # mixed dtypes
    assert _norms_finite([grads[0].double(), grads[1]])
    huge = [torch.full((4,), 3e38)]  # finite entries, overflowing norm (float32)
    assert not _norms_finite(huge)

    health = FitHealth()
    params = [torch.zeros(4, requires_grad=True), torch.zeros(2, requires_grad=True)]
    params[0].grad, params[1].grad = huge[0].clone(), torch.zeros(2)
    health.check_step(1.0, params, gradients=True, divergence=False)  # no error: finite
    params[1].grad = torch.tensor([0.0, math.nan])
    with pytest.raises(FitHealthError, match=r"parameter #1"):
        health.check_step(1.0, params, gradients=True, divergence=False)


@pytest.mark.parametrize("dtype", [torch.float32, D64])
def test_a_single_value_is_read_as_the_stacked_read_reads_it(dtype):
    """One value with nothing else to read is read with ``item``: the float the stacked read
    gives; with an ESS pending both are read together as before."""
    loss = MissingScoreMatching()
    value = torch.tensor(1.0, dtype=dtype) / 3
    assert loss._read(value) == torch.stack([value]).tolist()
    loss._pending_ess = torch.tensor(7.5, dtype=dtype)
    assert loss._read(value) == [torch.stack([value]).tolist()[0]]
    assert loss.diagnostics["ess"] == 7.5


@pytest.mark.parametrize("missing", [False, True])
def test_one_noise_scale_draws_the_noise_of_the_indexed_scale(missing):
    """With one noise scale the perturbation broadcasts it instead of indexing it with the
    scale index it still draws: the same random numbers, the same noisy rows and scales as
    ``scales[randint(1, n)]`` (and a mixture of scales still indexes)."""
    torch.manual_seed(0)
    x = torch.randn(30, 4, dtype=D64)
    mask = torch.rand(30, 4) > (0.3 if missing else -1.0)
    x = torch.where(mask, x, torch.zeros((), dtype=D64))
    for scales in ([0.3], [0.1, 0.5]):
        objective = DenoisingObjective(scales if len(scales) > 1 else scales[0])
        torch.manual_seed(5)
        noisy, sigma = objective.perturb(x, mask)
        after = torch.rand(())
        torch.manual_seed(5)
        pick = torch.randint(len(scales), (30,))
        want_sigma = torch.tensor(scales, dtype=D64)[pick].unsqueeze(-1)
        want = torch.where(mask, torch.addcmul(x, torch.randn_like(x), want_sigma), x)
        assert torch.equal(sigma.expand(30, 1), want_sigma)
        assert torch.equal(noisy, want)
        assert torch.equal(torch.rand(()), after)  # as many random numbers consumed


def test_one_handler_fills_and_rejects_as_the_two_did():
    """The loss's one handler around the model gives the trace of :class:`FillUnobserved` inside
    :class:`RejectLatent` (the same sites, values and scales; a zero at the missing
    coordinates), and refuses a latent site with the same error."""
    from pyro_msm.infer.sites import FillRejectLatent, RejectLatent

    x = mcar(torch.randn(6, 3, dtype=D64), 0.3)
    loc, precision = torch.zeros(3, dtype=D64), torch.eye(3, dtype=D64)

    def model(x):
        with pyro.plate("rows", 6, subsample_size=4) as idx:
            pyro_msm.observe("x", GaussianEnergy(loc, precision), obs=x[idx])

    def traced(handlers):
        torch.manual_seed(0)
        return poutine.trace(handlers(model)).get_trace(x)

    one = traced(lambda m: FillRejectLatent()(m))
    two = traced(lambda m: RejectLatent()(FillUnobserved()(m)))
    assert list(one.nodes) == list(two.nodes)
    for name, site in one.nodes.items():
        other = two.nodes[name]
        assert site["type"] == other["type"]
        if isinstance(site.get("value"), torch.Tensor):
            assert torch.equal(site["value"], other["value"])
    assert not one.nodes["x_unobserved"]["value"].any()

    def latent(x):
        pyro.sample("z", pyro.distributions.Normal(0.0, 1.0))
        model(x)

    for handler in (FillRejectLatent, RejectLatent):
        with pytest.raises(ValueError, match="latent site 'z'"):
            poutine.trace(handler()(latent)).get_trace(x)
