"""Energy models other than the closed-form Gaussian, through the whole loss."""

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.infer import SVI
from pyro.optim import Adam

import pyro_msm
import pyro_msm.guides
from pyro_msm.distributions import EnergyMLP, GaussianEnergy, MLPEnergy
from pyro_msm.infer.derivatives import score
from pyro_msm.missingness import apply_mask, mcar_mask


def _data(n=400, d=3, rate=0.3, dtype=torch.float32):
    torch.manual_seed(0)
    mix = torch.tensor([[1.0, 0.6, 0.0], [0.0, 1.0, 0.6], [0.0, 0.0, 1.0]], dtype=dtype)[:d, :d]
    full = torch.randn(n, d, dtype=dtype) @ mix
    return full, apply_mask(full, mcar_mask(full.shape, rate, seed=1))


def test_normaliser_is_ignored_pyro_distribution_equals_energy():
    """A Pyro MultivariateNormal and a GaussianEnergy with the same parameters differ only by the
    normaliser, so every estimator gives the same loss for the same draws."""
    _, x = _data()
    precision = torch.tensor([[2.0, 0.5, 0.0], [0.5, 1.5, 0.3], [0.0, 0.3, 1.0]])
    loc = torch.tensor([0.1, -0.2, 0.3])

    def model_energy(data):
        with pyro.plate("rows", data.shape[0]):
            pyro_msm.observe("x", GaussianEnergy(loc, precision), obs=data)

    def model_mvn(data):
        with pyro.plate("rows", data.shape[0]):
            mvn = dist.MultivariateNormal(loc, precision_matrix=precision)
            pyro_msm.observe("x", mvn, obs=data)

    for estimator in ("iw", "zeroed", "mean_impute", "complete_case"):
        loss = pyro_msm.MissingScoreMatching(estimator)
        torch.manual_seed(3)
        a = loss.loss(model_energy, None, x)
        torch.manual_seed(3)
        b = loss.loss(model_mvn, None, x)
        assert abs(a - b) <= 1e-4 * abs(a), (estimator, a, b)


def test_mlp_energy_learns_the_score_from_incomplete_data():
    full, x = _data()
    net = EnergyMLP(3, (16, 16))
    truth_cov = torch.tensor([[1.0, 0.6, 0.0], [0.6, 1.36, 0.6], [0.0, 0.6, 1.36]])
    truth_prec = torch.linalg.inv(truth_cov)
    test_points = torch.randn(2000, 3) @ torch.linalg.cholesky(truth_cov).T
    true_score = -test_points @ truth_prec

    def score_mse():
        with torch.no_grad():
            return float((score(MLPEnergy(net), test_points) - true_score).pow(2).sum(-1).mean())

    def model(data):
        pyro.module("energy", net)
        with pyro.plate("rows", data.shape[0]):
            pyro_msm.observe("x", MLPEnergy(net), obs=data)

    before = score_mse()
    loss = pyro_msm.MissingScoreMatching("iw", num_particles=4)
    svi = SVI(model, pyro_msm.guides.no_guide, Adam({"lr": 0.01}), loss)
    # a flexible energy can overfit score matching on finite data if trained for long without
    # regularisation; 60 steps is well before that for this network and data size
    losses = [svi.step(x) for _ in range(60)]
    after = score_mse()
    assert all(torch.isfinite(torch.tensor(losses)))
    assert after < 0.3 * before, (before, after)
    assert 1.0 <= loss.diagnostics["ess"] <= 8.0


def test_float64_end_to_end():
    _, x = _data(dtype=torch.float64)

    def model(data):
        loc = pyro.param("loc", torch.zeros(3, dtype=torch.float64))
        tril = pyro.param(
            "tril", torch.eye(3, dtype=torch.float64), constraint=constraints.lower_cholesky
        )
        with pyro.plate("rows", data.shape[0]):
            return pyro_msm.observe("x", GaussianEnergy(loc, precision_tril=tril), obs=data)

    svi = SVI(model, pyro_msm.guides.no_guide, Adam({"lr": 0.05}), pyro_msm.MissingScoreMatching())
    for _ in range(5):
        svi.step(x)
    assert pyro.param("loc").dtype == torch.float64
    assert torch.isfinite(pyro.param("tril")).all()
