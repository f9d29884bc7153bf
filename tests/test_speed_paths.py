"""The fast paths of the losses compute the same mathematics: row chunks, the cached IW proposal,
one particle for complete rows, the rowwise Jacobian diagonal and the closed-form HVP."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pyro
import pytest
import torch
from builders import mcar

import pyro_msm
from pyro_msm.distributions import EnergyMLP, FunctionEnergy, GaussianEnergy, MLPEnergy
from pyro_msm.guides import AmortizedNormal, no_guide
from pyro_msm.infer import (
    GaussianConditionalProposal,
    MissingScoreMatching,
    MomentMatchedProposal,
    PreparedProposal,
    Proposal,
)
from pyro_msm.infer.derivatives import hessian_vector_product, score_and_diag_jacobian
from pyro_msm.infer.gaussian import conditional_gaussian

D64 = torch.float64


class RowDraws(Proposal):
    """Draws that are a fixed function of each row's content (so the same row gets the same
    draws whatever chunk or sub-table it is in), with a made-up log density."""

    def sample(self, x, mask, num_particles):
        k = torch.arange(1, num_particles + 1, dtype=x.dtype).reshape(-1, 1, 1)
        draws = torch.sin(k * (x.sum(-1, keepdim=True) + torch.arange(x.shape[-1], dtype=x.dtype)))
        return draws, -0.5 * (draws * draws * (~mask)).sum(-1)


def mlp_model(net):
    def model(x):
        pyro.module("energy", net)
        with pyro.plate("rows", x.shape[0]):
            pyro_msm.observe("x", MLPEnergy(net), obs=x)

    return model


def gaussian_model(loc, precision):
    def model(x):
        with pyro.plate("rows", x.shape[0]):
            pyro_msm.observe("x", GaussianEnergy(loc, precision), obs=x)

    return model


def step(loss, model, guide, x, params):
    for p in params:
        p.grad = None
    value = loss.loss_and_grads(model, guide, x)
    return value, [p.grad.clone() for p in params]


@pytest.fixture
def table():
    torch.manual_seed(0)
    return mcar(torch.randn(60, 6, dtype=D64), 0.3, keep_one=False)


@pytest.mark.parametrize(
    "estimator, objective",
    [
        ("iw", "exact"),
        ("em", "exact"),
        ("iw", "denoising"),
        ("iw", "truncated"),
        ("zeroed", "exact"),
        ("mean_impute", "exact"),
    ],
)
def test_chunked_loss_and_gradients_equal_one_pass(table, estimator, objective):
    net = EnergyMLP(6, (8, 8)).double()
    params = list(net.parameters())[:-1]  # the output bias has no effect on the score
    out = []
    for chunk_size in (None, 17):
        pyro.clear_param_store()
        torch.manual_seed(1)
        loss = MissingScoreMatching(
            estimator, 4, objective=objective, proposal=RowDraws(), chunk_size=chunk_size
        )
        out.append(step(loss, mlp_model(net), no_guide, table, params))
    (v0, g0), (v1, g1) = out
    assert v1 == pytest.approx(v0, rel=1e-12, abs=1e-12)
    for a, b in zip(g0, g1, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_chunked_variational_model_step_equals_one_pass(table):
    loc, precision = torch.zeros(6, dtype=D64), torch.eye(6, dtype=D64) * 1.5

    def model(x):
        mu = pyro.param("mu", loc.clone())
        with pyro.plate("rows", x.shape[0]):
            pyro_msm.observe("x", GaussianEnergy(mu, precision), obs=x)

    out = []
    for chunk_size in (None, 23):
        pyro.clear_param_store()
        torch.manual_seed(2)
        guide = AmortizedNormal(model, hidden_dims=(8,)).double()
        loss = MissingScoreMatching("variational", 5, chunk_size=chunk_size)
        value = loss.loss_and_grads(model, guide, table)
        out.append((value, pyro.param("mu").unconstrained().grad.clone()))
    assert out[1][0] == pytest.approx(out[0][0], rel=1e-12)
    torch.testing.assert_close(out[1][1], out[0][1], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("chunk_size", [37, None])
@pytest.mark.parametrize("estimator", ["variational", "hybrid"])
@pytest.mark.parametrize("energy", ["gaussian", "mlp"])
def test_variational_model_step_equals_the_one_graph_formula(table, estimator, energy, chunk_size):
    """A model step builds each chunk's particles from its own draws and gives the KL its
    gradient to the guide through the score at the draws; values and the gradients of model and
    guide equal the formula written as one graph (the model's density at the draws twice: live,
    for the guide, and detached, for the surrogate's weights; every row with r particles). In
    one chunk (``chunk_size=None``), a closed-form model's density at the draws is computed once
    for the surrogate and the KL."""
    from pyro import poutine

    from pyro_msm.infer.derivatives import log_prob
    from pyro_msm.infer.estimators import variational_particles, weighted_particles
    from pyro_msm.infer.objectives import ExactObjective
    from pyro_msm.infer.score_matching import _particle_plate
    from pyro_msm.infer.sites import find_data_sites, guide_log_prob

    net = EnergyMLP(6, (8,)).double()

    def model(x):
        with pyro.plate("rows", x.shape[0]):
            if energy == "gaussian":
                mu = pyro.param("mu", torch.full((6,), 0.3, dtype=D64))
                fn = GaussianEnergy(mu, torch.eye(6, dtype=D64) * 1.5)
            else:
                pyro.module("energy", net)
                fn = MLPEnergy(net)
            pyro_msm.observe("x", fn, obs=x)

    r = 5
    pyro.clear_param_store()
    torch.manual_seed(3)
    guide = AmortizedNormal(model, hidden_dims=(8,)).double()
    guide(table)  # creates the guide's parameters
    model(table)
    params = [p.unconstrained() for p in pyro.get_param_store().values()]
    loss = MissingScoreMatching(estimator, r, chunk_size=chunk_size, max_plate_nesting=1)
    torch.manual_seed(4)
    value, grads = step(loss, model, guide, table, params)

    torch.manual_seed(4)
    for p in params:
        p.grad = None
    guide_trace = poutine.trace(_particle_plate(guide, r, -2)).get_trace(table)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(table)
    (site,) = find_data_sites(model_trace)
    log_q = guide_log_prob(guide_trace, [site])["x"]
    draws, x, mask = site.value, site.data, site.mask
    live, detached = log_prob(site.fn, draws), log_prob(site.fn, draws.detach())
    if estimator == "hybrid":
        particles = weighted_particles(site.fn, x, mask, draws, log_q.detach())
    else:
        particles = variational_particles(site.fn, x, mask, draws, detached)
    rows = mask.any(-1).to(D64)
    objective = (ExactObjective()(site.fn, particles) * rows).sum()
    kl = ((log_q - live + detached - detached.detach()).mean(0) * rows).sum()
    (objective + kl - kl.detach()).backward()
    assert value == pytest.approx(float(objective.detach()), rel=1e-10)
    assert loss.diagnostics["kl"] == pytest.approx(float(kl), rel=1e-10)
    for got, p in zip(grads, params, strict=True):
        torch.testing.assert_close(got, p.grad, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("estimator", ["variational", "hybrid"])
@pytest.mark.parametrize("objective", ["exact", "denoising"])
def test_one_model_run_per_guided_step_equals_the_replay(table, estimator, objective):
    """With one data site a guided step runs the model once (the guide reads that trace, the
    loss completes the rows itself); values and gradients of model and guide, over model and
    guide steps of a subsampled plate, equal the replay of the model against the guide's
    trace (the path taken by models with several data sites)."""
    net = EnergyMLP(6, (8,)).double()

    def model(x):
        pyro.module("energy", net)
        with pyro.plate("rows", x.shape[0], subsample_size=40) as idx:
            pyro_msm.observe("x", MLPEnergy(net), obs=x[idx])

    out = []
    for single in (None, False):
        pyro.clear_param_store()
        torch.manual_seed(5)
        guide = AmortizedNormal(model, hidden_dims=(8,)).double()
        loss = MissingScoreMatching(
            estimator, 3, objective=objective, guide_steps=2, max_plate_nesting=1
        )
        loss._single_site = single  # False: the replay path
        steps = []
        for _ in range(3):
            for p in pyro.get_param_store().values():
                p.unconstrained().grad = None
            value = loss.loss_and_grads(model, guide, table)
            grads = {k: p.unconstrained().grad for k, p in pyro.get_param_store().items()}
            steps.append((value, loss.diagnostics["kl"], grads))
        assert loss._single_site is (single is None)
        out.append(steps)
    for (v0, k0, g0), (v1, k1, g1) in zip(*out, strict=True):
        assert v1 == pytest.approx(v0, rel=1e-12) and k1 == pytest.approx(k0, rel=1e-12)
        assert g0.keys() == g1.keys()
        for key in g0:
            if g0[key] is None:
                assert g1[key] is None
            else:
                torch.testing.assert_close(g1[key], g0[key], rtol=1e-10, atol=1e-12)


def test_cached_proposal_is_a_fresh_fit_on_the_same_table(table):
    mask = ~torch.isnan(table)
    x = torch.nan_to_num(table)
    proposal = MomentMatchedProposal()
    prepared = proposal.prepare(x, mask, site="x")
    fresh = GaussianConditionalProposal.fit(x, mask)
    fitted, _ = proposal.fitted["x"]
    torch.testing.assert_close(fitted.loc, fresh.loc, rtol=0, atol=0)
    torch.testing.assert_close(fitted.covariance, fresh.covariance, rtol=0, atol=0)
    # per-pattern factors and cached means are each row's conditional
    mean, chol = conditional_gaussian(x, mask, fresh.loc, fresh.precision)
    torch.testing.assert_close(prepared.mean, mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(prepared.factors[prepared.inverse], chol, rtol=1e-12, atol=1e-12)
    # the same table (a new tensor with equal values) reuses the fit and the conditionals
    assert proposal.prepare(x.clone(), mask.clone(), site="x") is prepared
    # a new data set refits; a subsampled batch keeps the fit; refresh refits on request
    other = x + 1.0
    proposal.prepare(other, mask, site="x")
    refit, _ = proposal.fitted["x"]
    torch.testing.assert_close(refit.loc, GaussianConditionalProposal.fit(other, mask).loc)
    proposal.prepare(x[:10], mask[:10], site="x", subsampled=True)
    assert proposal.fitted["x"][0] is refit
    proposal.refresh()
    assert not proposal.fitted
    # an explicit fit on a whole table pins the Gaussian for every batch
    proposal.fit(table)
    pinned = proposal.proposal_for(x[:5], mask[:5], site="x")
    torch.testing.assert_close(pinned.loc, fresh.loc, rtol=0, atol=0)
    with pytest.raises(ValueError, match="refit"):
        MomentMatchedProposal(refit="never")


def test_loss_refits_the_proposal_only_for_a_new_table(table):
    model = gaussian_model(torch.zeros(6, dtype=D64), torch.eye(6, dtype=D64))
    loss = MissingScoreMatching("iw", 3)
    loss.loss(model, no_guide, table)
    first = loss.proposal.fitted["x"][0]
    loss.loss(model, no_guide, table.clone())
    assert loss.proposal.fitted["x"][0] is first
    loss.loss(model, no_guide, table * 2)
    assert loss.proposal.fitted["x"][0] is not first
    loss.refresh_proposal()
    assert not loss.proposal.fitted


def test_complete_rows_contribute_the_classical_loss_with_one_particle(table):
    torch.manual_seed(3)
    loc = torch.randn(6, dtype=D64)
    a = torch.randn(6, 6, dtype=D64)
    precision = a @ a.T / 6 + torch.eye(6, dtype=D64)
    model = gaussian_model(loc, precision)
    mask = ~torch.isnan(table)
    complete = torch.randn(25, 6, dtype=D64)
    residual = ((complete - loc) @ precision) ** 2
    classical = (-2 * torch.diagonal(precision).sum() + residual.sum(-1)).sum()
    for r in (1, 10):
        value = MissingScoreMatching("iw", r).loss(model, no_guide, complete)
        assert value == pytest.approx(float(classical), rel=1e-12)
    # in a mixed table, complete rows add exactly their classical loss to the IW rows' loss
    incomplete = table[~mask.all(-1) & mask.any(-1)]
    mixed = torch.cat([complete, incomplete])
    loss = MissingScoreMatching("iw", 5, proposal=RowDraws())
    assert loss.loss(model, no_guide, mixed) == pytest.approx(
        float(classical) + loss.loss(model, no_guide, incomplete), rel=1e-12
    )


@pytest.mark.parametrize("d", [3, 20])
def test_rowwise_diagonal_equals_reverse_with_parameter_gradients(d):
    torch.manual_seed(4)
    net = EnergyMLP(d, (8, 8)).double()
    fn = MLPEnergy(net).expand((7,))
    z = torch.randn(3, 7, d, dtype=D64)
    params = list(net.parameters())[:-1]
    results = []
    for method in ("reverse", "rowwise"):
        a, b = score_and_diag_jacobian(fn, z, method)
        results.append((a, b, torch.autograd.grad((2 * b + a * a).sum(), params)))
    (a0, b0, g0), (a1, b1, g1) = results
    torch.testing.assert_close(a1, a0)
    torch.testing.assert_close(b1, b0)
    for x, y in zip(g0, g1, strict=True):
        torch.testing.assert_close(x, y)
    # b is the diagonal of the Hessian of log q: a central finite difference of the score
    h, j = 1e-5, 1
    shift = torch.zeros(d, dtype=D64)
    shift[j] = h
    fd = score_and_diag_jacobian(fn, z + shift)[0] - score_and_diag_jacobian(fn, z - shift)[0]
    torch.testing.assert_close(b1[..., j], fd[..., j].detach() / (2 * h), rtol=1e-6, atol=1e-8)


def test_rowwise_refuses_per_row_parameters():
    fn = GaussianEnergy(torch.zeros(4, 2), torch.eye(2).expand(4, 2, 2).clone())
    with pytest.raises(ValueError, match="reverse"):
        score_and_diag_jacobian(FunctionEnergy(lambda x: x.sum(-1), 2), torch.zeros(2), "nope")
    from pyro_msm.infer.derivatives import _rowwise_score_and_diag  # noqa: F401

    assert fn.row_distribution() is None
    with pytest.raises(ValueError, match="batch shape"):
        from torch.distributions import Independent, Normal

        score_and_diag_jacobian(
            Independent(Normal(torch.zeros(4, 2), 1.0), 1), torch.zeros(4, 2), "rowwise"
        )


def test_gaussian_hvp_hook_equals_autodiff():
    torch.manual_seed(5)
    loc = torch.randn(4, dtype=D64)
    a = torch.randn(4, 4, dtype=D64)
    precision = a @ a.T + torch.eye(4, dtype=D64)
    gaussian = GaussianEnergy(loc, precision)
    autodiff = FunctionEnergy(gaussian.energy, 4)
    z, v = torch.randn(2, 5, 4, dtype=D64), torch.randn(2, 5, 4, dtype=D64)
    a0, hv0 = hessian_vector_product(autodiff, z, v)
    a1, hv1 = hessian_vector_product(gaussian, z, v)
    torch.testing.assert_close(a1, a0)
    torch.testing.assert_close(hv1, hv0)
    torch.testing.assert_close(hv1, -v @ precision)


def test_gaussian_row_distribution_strips_plate_views():
    loc, precision = torch.zeros(3), torch.eye(3) * 2
    expanded = GaussianEnergy(loc, precision).expand((5, 7))
    base = expanded.row_distribution()
    assert base is not None and base.batch_shape == torch.Size()
    torch.testing.assert_close(base.precision, precision)
    assert expanded.precision.stride(0) == 0  # symmetrised without materialising


def test_chunk_size_is_checked():
    with pytest.raises(ValueError, match="chunk_size"):
        MissingScoreMatching(chunk_size=0)
    with pytest.raises(ValueError, match="chunk_size"):
        MissingScoreMatching(chunk_size="big")


def test_custom_proposals_draw_through_prepare(table):
    mask = ~torch.isnan(table)
    x = torch.nan_to_num(table)
    prepared = RowDraws().prepare(x, mask)
    assert isinstance(prepared, PreparedProposal)
    rows = torch.tensor([3, 7])
    draws, _ = prepared.sample(rows, 2)
    torch.testing.assert_close(draws, RowDraws().sample(x, mask, 2)[0][:, rows])


def test_speed_benchmark_smoke(capsys):
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "speed.py"
    spec = importlib.util.spec_from_file_location("speed_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    threads = torch.get_num_threads()
    try:
        module.main(["--smoke"])
        module.main(["--smoke", "--sections", "demo"])
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    for what in (
        "torchebm exact",
        "IW step r=3",
        "variational cycle",
        "sliced with",
        "peak memory",
        "demo: variational fit / IW fit",
    ):
        assert what in out
    ratios = [float(line.split()[-3]) for line in out.splitlines() if "  <= " in line]
    assert ratios and all(math.isfinite(r) and r > 0 for r in ratios)


def _taylor_nets():
    torch.manual_seed(7)
    deep = torch.nn.Sequential(
        torch.nn.Linear(5, 8),
        torch.nn.Softplus(beta=2.0, threshold=1.0),  # some inputs take the linear branch
        torch.nn.Linear(8, 8),
        torch.nn.Tanh(),
        torch.nn.Linear(8, 6),
        torch.nn.SiLU(),
        torch.nn.Linear(6, 6),
        torch.nn.Sigmoid(),
        torch.nn.Linear(6, 1),
    ).double()
    no_activation_last = torch.nn.Sequential(
        torch.nn.Tanh(), torch.nn.Linear(5, 4), torch.nn.Linear(4, 1)
    ).double()
    return [
        FunctionEnergy(deep, 5),
        FunctionEnergy(no_activation_last, 5),
        MLPEnergy(EnergyMLP(5, (7, 7), confinement=0.3).double()),
    ]


@pytest.mark.parametrize("k", range(3))
def test_taylor_pass_equals_reverse_mode_with_parameter_gradients(k):
    from pyro_msm.infer.derivatives import taylor_network

    fn = _taylor_nets()[k]
    assert taylor_network(fn) is not None
    params = list(fn.fn.parameters())
    z = 2 * torch.randn(3, 4, 5, dtype=D64)
    out = []
    for method in ("reverse", "taylor"):
        a, b = score_and_diag_jacobian(fn, z, method)
        grads = torch.autograd.grad((2 * b + a * a).sum(), params, allow_unused=True)
        grads = [g if g is not None else 0 * p for g, p in zip(grads, params, strict=True)]
        out.append((a, b, grads))
    (a0, b0, g0), (a1, b1, g1) = out
    torch.testing.assert_close(a1, a0, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(b1, b0, rtol=1e-10, atol=1e-12)
    for x, y in zip(g0, g1, strict=True):
        torch.testing.assert_close(y, x, rtol=1e-10, atol=1e-12)
    # "auto" takes the Taylor pass for these networks
    torch.testing.assert_close(score_and_diag_jacobian(fn, z)[1], b1)


@pytest.mark.parametrize("k", range(3))
def test_directional_derivatives_equal_the_hessian_vector_product(k):
    from pyro_msm.infer.derivatives import directional_derivatives

    fn = _taylor_nets()[k]
    autodiff = FunctionEnergy(fn.energy, 5)  # the same density, through autodiff
    z = torch.randn(3, 4, 5, dtype=D64)
    v = torch.randn(4, 2, 5, dtype=D64)  # two directions per row, shared by the particles
    along, curv = directional_derivatives(fn, z, v)
    assert along.shape == curv.shape == (3, 4, 2)
    a, hv = hessian_vector_product(autodiff, z.unsqueeze(-2).expand(3, 4, 2, 5), v)
    torch.testing.assert_close(along, (a * v).sum(-1), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(curv, (hv * v).sum(-1), rtol=1e-10, atol=1e-12)
    # the fallback (no Taylor network) gives the same numbers
    along0, curv0 = directional_derivatives(autodiff, z, v)
    torch.testing.assert_close(along0, along, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(curv0, curv, rtol=1e-10, atol=1e-12)


def test_taylor_pass_leaves_other_networks_to_autodiff():
    from pyro_msm.infer.derivatives import taylor_network

    relu = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
    two_outputs = torch.nn.Sequential(torch.nn.Linear(3, 2))
    hooked = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    hooked[0].register_forward_hook(lambda module, inputs, out: out * 2)
    for net in (relu, two_outputs, hooked):
        assert taylor_network(FunctionEnergy(net, 3)) is None
    assert taylor_network(GaussianEnergy(torch.zeros(3), torch.eye(3))) is None
    with pytest.raises(ValueError, match="taylor"):
        score_and_diag_jacobian(FunctionEnergy(relu, 3), torch.zeros(2, 3), "taylor")
    # the hook changes the energy: autodiff sees it
    a, _ = score_and_diag_jacobian(FunctionEnergy(hooked, 3), torch.ones(2, 3))
    b, _ = score_and_diag_jacobian(
        FunctionEnergy(lambda x: hooked[2](hooked[1](2 * hooked[0].forward(x))), 3),
        torch.ones(2, 3),
    )
    torch.testing.assert_close(a, b)


def test_sliced_loss_on_a_taylor_network_equals_the_hvp_route(table):
    """Same random directions, the Taylor pass and the autodiff HVP: the same loss and
    gradients."""
    net = EnergyMLP(6, (8, 8)).double()
    params = list(net.parameters())[:-1]
    out = []
    for wrap in (MLPEnergy, lambda n: FunctionEnergy(lambda x: n(x), 6)):

        def model(x, wrap=wrap):
            pyro.module("energy", net)
            with pyro.plate("rows", x.shape[0]):
                pyro_msm.observe("x", wrap(net), obs=x)

        pyro.clear_param_store()
        torch.manual_seed(3)
        loss = MissingScoreMatching("iw", 3, objective="sliced", proposal=RowDraws())
        out.append(step(loss, model, no_guide, table, params))
    (v0, g0), (v1, g1) = out
    assert v1 == pytest.approx(v0, rel=1e-10)
    for a, b in zip(g0, g1, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_unexpand_returns_the_base_of_a_broadcast_with_its_gradient():
    from pyro_msm.distributions.energy import unexpand

    base = torch.randn(3, 3, dtype=D64, requires_grad=True)
    m = base.expand(4, 5, 3, 3)
    u = unexpand(m)
    assert u.shape == (3, 3)
    (g,) = torch.autograd.grad((u * u).sum(), base)
    torch.testing.assert_close(g, 2 * base.detach())
    sliced = torch.randn(4, 3, 3)[1:].expand(2, 3, 3, 3)  # a view of a view: indexed away
    assert unexpand(sliced).shape == (3, 3, 3)


def test_guide_lr_sets_the_guide_parameters_step_size(table):
    """Adam moves a parameter by about its learning rate per step whatever the gradient's scale:
    with ``guide_lr`` a million times smaller than ``lr`` the guide barely moves while the
    model moves by ``lr``."""
    from pyro_msm.experiments.harness import run_svi

    def model(x, mask=None):
        mu = pyro.param("mu", torch.zeros(6, dtype=D64))
        with pyro.plate("rows", x.shape[0]):
            pyro_msm.observe("x", GaussianEnergy(mu, torch.eye(6, dtype=D64)), obs=x)

    moved = {}
    for guide_lr in (None, 1e-7):
        pyro.clear_param_store()
        torch.manual_seed(0)
        guide = AmortizedNormal(model, hidden_dims=(4,)).double()
        guide(table)  # creates its parameters
        before = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
        loss = MissingScoreMatching("variational", 2, guide_steps=1)
        run_svi(
            model, guide, loss, table, None, lambda: {}, steps=1, lr=0.1, guide_lr=guide_lr
        )
        after = dict(pyro.get_param_store().items())
        moved[guide_lr] = {
            k: float((after[k].detach() - v).abs().max()) for k, v in before.items()
        }
    for name, step in moved[1e-7].items():
        if name.startswith("AmortizedNormal."):
            assert step < 1e-5, name
            assert moved[None][name] > 1e-3, name
    assert moved[1e-7]["mu"] == pytest.approx(moved[None]["mu"], rel=1e-6)
    assert moved[None]["mu"] > 0.05


def test_variational_particles_of_completed_rows_skip_the_completion(table):
    from pyro_msm.infer.estimators import variational_particles

    mask = ~torch.isnan(table)
    x = torch.nan_to_num(table)
    draws = torch.randn((4, *table.shape), dtype=D64)
    completed = torch.where(mask, x, draws)
    fn = GaussianEnergy(torch.zeros(6, dtype=D64), torch.eye(6, dtype=D64))
    plain = variational_particles(fn, x, mask, draws)
    fast = variational_particles(fn, x, mask, completed, completed=True)
    assert torch.equal(plain.z, fast.z) and torch.equal(plain.weights, fast.weights)


@pytest.mark.parametrize("guide_lr", [None, 0.003])
def test_one_adam_over_all_parameters_takes_pyros_steps(table, guide_lr):
    """``run_svi``'s single optimiser gives the iterates of ``SVI`` with ``pyro.optim.Adam``
    (one optimiser per tensor), bit for bit, through model and guide steps."""
    from pyro.infer import SVI
    from pyro.optim import Adam

    from pyro_msm.experiments.harness import SVIAdam

    def model(x, mask=None):
        mu = pyro.param("mu", torch.zeros(6, dtype=D64))
        with pyro.plate("rows", x.shape[0]):
            pyro_msm.observe("x", GaussianEnergy(mu, torch.eye(6, dtype=D64)), obs=x)

    def lr_of(name: str) -> float:
        return guide_lr if guide_lr is not None and name.startswith("AmortizedNormal.") else 0.05

    runs = []
    for ours in (False, True):
        pyro.clear_param_store()
        torch.manual_seed(0)
        guide = AmortizedNormal(model, hidden_dims=(4,)).double()
        loss = MissingScoreMatching("variational", 3, guide_steps=2, guide_particles=2)
        if ours:
            svi = SVIAdam(model, guide, loss, 0.05, lr_of)
        else:
            svi = SVI(model, guide, Adam(lambda name: {"lr": lr_of(name)}), loss)
        pyro.set_rng_seed(1)
        values = [svi.step(table) for _ in range(7)]
        state = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
        runs.append((values, state))
    (values, state), (ours_values, ours_state) = runs
    assert ours_values == values
    assert state.keys() == ours_state.keys() and len(state) > 1
    for name, value in state.items():
        assert torch.equal(ours_state[name], value), name


def test_auto_chunks_are_cache_sized_on_the_cpu_only_without_closed_forms():
    """``chunk_size="auto"``: objectives that take the Jacobian's diagonal of an energy
    differentiated through a network get cache-sized chunks on the CPU (measured faster, see
    AUTO_CHUNK_ENTRIES_CPU); closed-form energies and the sliced and denoising objectives keep
    the large ones (smaller chunks only add per-chunk work there)."""
    from pyro_msm.infer.derivatives import has_closed_form
    from pyro_msm.infer.score_matching import AUTO_CHUNK_ENTRIES, AUTO_CHUNK_ENTRIES_CPU

    x = torch.zeros(3, 6, dtype=D64)
    gaussian = GaussianEnergy(torch.zeros(6, dtype=D64), torch.eye(6, dtype=D64))
    network = FunctionEnergy(EnergyMLP(6, (8,)).double(), 6)
    assert has_closed_form(gaussian.expand((3,))) and not has_closed_form(network)
    loss = MissingScoreMatching("iw", 4)
    assert loss._points_per_chunk(network, x) == AUTO_CHUNK_ENTRIES_CPU // 6
    assert loss._points_per_chunk(gaussian, x) == AUTO_CHUNK_ENTRIES // 6
    assert MissingScoreMatching("iw", 4, chunk_size=None)._points_per_chunk(network, x) is None
    for objective in ("sliced", "denoising"):  # no d-fold intermediates: large chunks
        loss = MissingScoreMatching("iw", 4, objective=objective)
        assert loss._points_per_chunk(network, x) == AUTO_CHUNK_ENTRIES // 6
    em = MissingScoreMatching("em", 4, objective="truncated")
    assert em._points_per_chunk(network, x) == AUTO_CHUNK_ENTRIES_CPU // 6


def test_row_ordered_pattern_factors_draw_what_the_gathered_factors_draw():
    """When most rows have a pattern of their own the proposal keeps its factors in row order
    and hands a chunk of consecutive rows a view of them; the draws and log densities equal
    those of the per-pattern factors gathered row by row (the path of a sharded preparation)."""
    torch.manual_seed(6)
    x = mcar(torch.randn(40, 12, dtype=D64), 0.4)
    mask = ~torch.isnan(x)
    proposal = GaussianConditionalProposal.fit(x, mask)
    data = torch.nan_to_num(x)
    row_order = proposal.prepare(data, mask)
    assert row_order._row_order
    every = torch.arange(40)
    gathered = GaussianConditionalProposal.fit(x, mask).prepare(data, mask, rows=every)
    assert not gathered._row_order
    for rows in (torch.arange(5, 23), torch.tensor([3, 9, 10, 30]), torch.arange(40)):
        assert row_order._factors(rows).shape == (len(rows), 12, 12)
        torch.testing.assert_close(row_order._factors(rows), gathered._factors(rows))
        out = []
        for prepared in (row_order, gathered):
            torch.manual_seed(7)
            out.append(prepared.sample(rows, 3))
        for a, b in zip(*out, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_autodiff_score_of_particles_equals_the_batched_evaluation():
    """``score`` evaluates a network that scores any rows on the particles flattened to rows:
    the score, its derivative (the denoising and variational losses differentiate it) and
    the parameter gradients equal those of the network run on the batched ``(r, n, d)``
    points, and per-row parameters keep the batched path."""
    from pyro_msm.infer.derivatives import _autodiff_score, score

    torch.manual_seed(5)
    net = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Softplus(), torch.nn.Linear(6, 1))
    net = net.double()
    fn = FunctionEnergy(lambda x: net(x), 4)  # not a Taylor network: autodiff
    params = list(net.parameters())[:-1]  # the last bias does not move the score
    z = torch.randn(3, 7, 4, dtype=D64)
    a = score(fn, z)
    reference = _autodiff_score(fn, z.clone().requires_grad_(True))
    torch.testing.assert_close(a, reference, rtol=1e-14, atol=1e-14)
    weights = torch.randn(3, 7, 4, dtype=D64)
    got = torch.autograd.grad((a * a * weights).sum(), params)
    want = torch.autograd.grad((reference * reference * weights).sum(), params)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-13, atol=1e-13)
    # through the points too (draws carrying a guide's graph)
    points = z.clone().requires_grad_(True)
    (dz,) = torch.autograd.grad((score(fn, points) * weights).sum(), points)
    (dz_ref,) = torch.autograd.grad((_autodiff_score(fn, points) * weights).sum(), points)
    torch.testing.assert_close(dz, dz_ref, rtol=1e-13, atol=1e-13)
    # a distribution expanded over the rows (batch shape (7,)) is scored batched, as before
    torch.testing.assert_close(score(fn.expand((7,)), z), reference, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("k", range(3))
def test_sweep_score_equals_reverse_mode(k):
    """For the networks of ``taylor_network`` the score is a forward pass and the chain rule
    written as ordinary operations: value, parameter gradients of a loss on it, and gradients
    through the points equal autodiff's (``autograd.grad(create_graph=True)``)."""
    from pyro_msm.infer.derivatives import _autodiff_score, score

    fn = _taylor_nets()[k]
    params = list(fn.fn.parameters())
    z = 2 * torch.randn(3, 4, 5, dtype=D64)
    weights = torch.randn(3, 4, 5, dtype=D64)
    points = z.clone().requires_grad_(True)
    got, want = score(fn, points), _autodiff_score(fn, points)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-13)
    inputs = params + [points]
    grads = [
        torch.autograd.grad(
            (a * a * weights).sum(), inputs, allow_unused=True, materialize_grads=True
        )
        for a in (got, want)
    ]
    for g, w in zip(*grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-13)
    with torch.no_grad():  # plain operations: no grad mode needed
        torch.testing.assert_close(score(fn, z), want.detach(), rtol=1e-12, atol=1e-13)


def test_softplus_slope_without_the_threshold_mask_is_exact_in_float32():
    """Above torch's softplus threshold the sigmoid rounds to exactly 1 in float32 (its
    derivative to exactly 0), so the Taylor terms skip the mask there: the same numbers as the
    masked formula, with many pre-activations beyond the threshold; float64 keeps the mask."""
    from pyro_msm.infer.derivatives import _softplus_slope, _softplus_terms

    layer = torch.nn.Softplus()
    u = torch.linspace(-40, 60, 20001).requires_grad_(True)
    s, linear = _softplus_slope(layer, u)
    assert linear is None and bool((u > 20).any())
    h, d1, d2 = _softplus_terms(layer, u)
    one = torch.ones(())
    masked = (torch.where(u > 20, one, s), torch.where(u > 20, 0 * one, s * (1 - s)))
    for got, want in zip((d1, d2), masked, strict=True):
        assert torch.equal(got, want)
        (g_got,) = torch.autograd.grad(got.sum(), u, retain_graph=True)
        (g_want,) = torch.autograd.grad(want.sum(), u, retain_graph=True)
        assert torch.equal(g_got, g_want)
    assert _softplus_slope(layer, u.detach().double())[1] is not None


@pytest.mark.parametrize("missing", [False, True])
@pytest.mark.parametrize("estimator", ["iw", "variational"])
@pytest.mark.parametrize("objective", ["denoising", "exact"])
def test_unit_weight_and_complete_row_paths_equal_the_general_path(
    monkeypatch, missing, estimator, objective
):
    """Complete rows and single particles of constant weight one skip the weights and the mask
    (``Particles.unit_weight``, ``Particles.all_scored``) and the denoising score of a Taylor
    network skips autodiff; the loss and every gradient equal the general path's (weights
    multiplied and summed, mask applied, autodiff score) to 1e-12 in float64, with and without
    missing entries, for the importance-weighted and the variational estimators (whose
    surrogate weights carry a gradient with value one, so they keep the general path)."""
    from pyro_msm.infer import derivatives, objectives

    torch.manual_seed(0)
    x = torch.randn(40, 5, dtype=D64)
    if missing:
        x = mcar(x, 0.3, keep_one=True)
    net = EnergyMLP(5, (8, 8)).double()
    params = list(net.parameters())[:-1]  # the output bias has no effect on the score
    fast_mask = objectives.on_scored

    def masked(values, particles):
        return values * particles.scored.to(values.dtype)

    weighted_mean = objectives.weighted_mean
    unit_calls = []

    def counted(weights, values):
        unit_calls.append(weights is None)
        return weighted_mean(weights, values)

    out = []
    for general in (False, True):
        unit_calls.clear()
        with monkeypatch.context() as patch:
            patch.setattr(objectives, "weighted_mean", counted)
            if general:
                patch.setattr(objectives.Particles, "mean_weights", property(lambda p: p.weights))
                patch.setattr(objectives, "on_scored", masked)
                patch.setattr(derivatives, "taylor_network", lambda fn: None)
            else:
                assert objectives.on_scored is fast_mask
            pyro.clear_param_store()
            torch.manual_seed(3)
            model = mlp_model(net)
            guide = no_guide if estimator == "iw" else AmortizedNormal(model, hidden_dims=(8,))
            if estimator != "iw":
                guide = guide.double()
            r = 1 if estimator == "iw" else 3
            loss = MissingScoreMatching(estimator, r, objective=objective, proposal=RowDraws())
            value = loss.loss_and_grads(model, guide, x)
            grads = [p.grad.clone() for p in params]
            for p in params:
                p.grad = None
            out.append((value, grads))
        assert any(unit_calls) != general  # the fast path is taken, and only without the patch
    (v0, g0), (v1, g1) = out
    assert v0 == pytest.approx(v1, rel=1e-12, abs=1e-12)
    for a, b in zip(g0, g1, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_single_particle_helpers_are_the_general_formulas_with_weight_one():
    """single_particle's particles have weight one and no mean weights; weighted_mean(None, .)
    is the weighted mean with weight one (and refuses several particles); on_scored is the mask
    product, skipped only when every coordinate is scored."""
    from pyro_msm.infer.estimators import single_particle
    from pyro_msm.infer.objectives import moment_loss, on_scored, weighted_mean

    torch.manual_seed(1)
    z = torch.randn(6, 4, dtype=D64)
    mask = torch.rand(6, 4) < 0.6
    p = single_particle(z, mask, torch.ones(6, dtype=D64))
    assert p.unit_weight and not p.all_scored and p.mean_weights is None
    assert torch.equal(p.weights, torch.ones(1, 6, dtype=D64))
    values = torch.randn(1, 6, 3, dtype=D64)
    assert torch.equal(weighted_mean(None, values), weighted_mean(p.weights, values))
    a, b = torch.randn(2, 1, 6, 3, dtype=D64)
    assert torch.equal(moment_loss(None, a, b), moment_loss(p.weights, a, b))
    with pytest.raises(ValueError, match="one particle"):
        weighted_mean(None, torch.randn(2, 6, 3, dtype=D64))
    rows = torch.randn(6, 4, dtype=D64)
    assert torch.equal(on_scored(rows, p), rows * mask.to(D64))
    full = single_particle(z, torch.ones_like(mask), torch.ones(6, dtype=D64), all_scored=True)
    assert on_scored(rows, full) is rows
