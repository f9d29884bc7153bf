"""Direct checks of public mathematical pieces that other tests only exercise through the
losses: derivative helpers against closed forms, the loss classes with a fixed estimator, and the
graph metrics and eBIC against hand computation."""

from __future__ import annotations

import math

import pyro
import pytest
import torch

import pyro_msm
from pyro_msm.distributions import FunctionEnergy, GaussianEnergy
from pyro_msm.graphical.metrics import confusion, parameter_errors, upper_pairs
from pyro_msm.graphical.selection import ebic, observed_log_likelihood
from pyro_msm.guides import no_guide
from pyro_msm.infer import IWScoreMatching, MissingScoreMatching, VariationalScoreMatching
from pyro_msm.infer.derivatives import diag_jacobian, hessian_vector_product
from pyro_msm.infer.gaussian import marginal_score

D = torch.float64


def test_diag_jacobian_of_a_coordinatewise_map_is_its_derivative():
    x = torch.randn(5, 3, dtype=D)
    f, diag = diag_jacobian(lambda y: torch.sin(y) * y, x)
    torch.testing.assert_close(f, torch.sin(x) * x)
    torch.testing.assert_close(diag, torch.cos(x) * x + torch.sin(x))


def test_hessian_vector_product_of_a_gaussian_is_minus_precision_times_v():
    precision = torch.tensor([[2.0, 0.5, 0.0], [0.5, 1.0, 0.3], [0.0, 0.3, 1.5]], dtype=D)
    loc = torch.tensor([0.1, -0.2, 0.3], dtype=D)
    fn = FunctionEnergy(lambda v: 0.5 * ((v - loc) @ precision * (v - loc)).sum(-1), 3)
    z, v = torch.randn(4, 3, dtype=D), torch.randn(4, 3, dtype=D)
    score, hv = hessian_vector_product(fn, z, v)
    torch.testing.assert_close(score, -(z - loc) @ precision)
    torch.testing.assert_close(hv, -v @ precision)


def test_marginal_score_is_the_score_of_the_observed_block():
    precision = torch.tensor([[2.0, 0.5, 0.2], [0.5, 1.0, 0.3], [0.2, 0.3, 1.5]], dtype=D)
    covariance = torch.linalg.inv(precision)
    loc = torch.tensor([0.1, -0.2, 0.3], dtype=D)
    x = torch.tensor([[0.4, 9.0, -0.7]], dtype=D)  # the middle entry is missing
    mask = torch.tensor([[True, False, True]])
    s, diag = marginal_score(x, mask, loc, covariance)
    keep = torch.tensor([0, 2])
    q = torch.linalg.inv(covariance[keep][:, keep])
    torch.testing.assert_close(s[0, keep], -(x[0, keep] - loc[keep]) @ q)
    torch.testing.assert_close(diag[0, keep], -torch.diagonal(q))
    assert s[0, 1] == 0 and diag[0, 1] == 0


def test_fixed_estimator_classes_equal_the_general_loss():
    torch.manual_seed(0)
    x = torch.randn(30, 3)
    x[::3, 1] = float("nan")

    def model(data):
        with pyro.plate("rows", data.shape[0]):
            pyro_msm.observe("x", GaussianEnergy(torch.zeros(3), torch.eye(3)), obs=data)

    assert IWScoreMatching().estimator == "iw"
    assert VariationalScoreMatching().estimator == "variational"
    pyro.set_rng_seed(1)
    fixed = IWScoreMatching(num_particles=7).loss(model, no_guide, x)
    pyro.set_rng_seed(1)
    general = MissingScoreMatching("iw", num_particles=7).loss(model, no_guide, x)
    assert fixed == pytest.approx(general)
    with pytest.raises(TypeError):
        IWScoreMatching(estimator="zeroed")


def test_confusion_and_upper_pairs_count_each_pair_once():
    truth = torch.tensor([[0, 1, 0], [1, 0, 1], [0, 1, 0]])
    predicted = torch.tensor([[0, 1, 1], [1, 0, 0], [1, 0, 0]], dtype=torch.bool)
    c = confusion(truth, predicted)
    assert {k: int(v) for k, v in c.items()} == {"tp": 1, "fp": 1, "tn": 0, "fn": 1}
    assert upper_pairs(torch.arange(9.0).reshape(3, 3)).tolist() == [1.0, 2.0, 5.0]


def test_parameter_errors_vanish_at_the_truth_and_match_the_closed_forms():
    truth = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=D)
    zero = parameter_errors(truth, truth)
    assert all(abs(v) < 1e-12 for v in zero.values())
    scaled = parameter_errors(2 * truth, truth)
    assert scaled["frobenius"] == pytest.approx(1.0)
    # Stein loss tr(S P_hat) - log det(S P_hat) - d with S = truth^-1: 2d - d log 2 - d
    assert scaled["stein"] == pytest.approx(2 * 2 - 2 * math.log(2) - 2)


def test_ebic_is_minus_twice_the_observed_likelihood_plus_its_penalties():
    torch.manual_seed(0)
    x = torch.randn(50, 3, dtype=D)
    mask = torch.rand(50, 3) > 0.2
    loc = torch.zeros(1, 3, dtype=D)
    sparse = torch.eye(3, dtype=D).unsqueeze(0)
    edge = torch.tensor([[[1.0, 0.3, 0.0], [0.3, 1.0, 0.0], [0.0, 0.0, 1.0]]], dtype=D)
    n, d = 50, 3
    for precision, edges in ((sparse, 0), (edge, 1)):
        ll = float(observed_log_likelihood(x, mask, loc[0], precision[0]).sum())
        for beta in (0.0, 0.5):
            expected = -2 * ll + edges * math.log(n) + 4 * beta * edges * math.log(d)
            got = float(ebic(x, mask, loc, precision, beta=beta)[0])
            assert got == pytest.approx(expected, rel=1e-9)
