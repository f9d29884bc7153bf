"""The ``compile`` option of the objectives and of the loss: compiled values and gradients equal
eager ones, and a compiler failure warns once and falls back to eager evaluation."""

from __future__ import annotations

import warnings

import pyro
import pytest
import torch

import pyro_msm
from pyro_msm.distributions import FunctionEnergy, GaussianEnergy
from pyro_msm.guides import no_guide
from pyro_msm.infer import MissingScoreMatching
from pyro_msm.infer.objectives import ExactObjective, Particles, SlicedObjective

D64 = torch.float64
AOT = {"backend": "aot_eager"}  # dynamo + AOT autograd, without inductor's slow C++ build


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(3, 8), torch.nn.Softplus(), torch.nn.Linear(8, 1)
    ).double()


def _particles(n=12, r=2):
    torch.manual_seed(1)
    z = torch.randn(r, n, 3, dtype=D64)
    weights = torch.softmax(torch.randn(r, n, dtype=D64), 0)
    scored = torch.rand(n, 3) < 0.7
    return Particles(z, weights, scored, torch.ones(n, dtype=D64))


def _broken_backend(graph_module, example_inputs):
    raise RuntimeError("this compiler always fails")


@pytest.mark.parametrize("energy", ["mlp", "gaussian"])
def test_compiled_objective_equals_eager_values_and_gradients(energy):
    net = _net()
    loc = torch.zeros(3, dtype=D64, requires_grad=True)
    if energy == "mlp":
        fn, params = FunctionEnergy(net, 3), list(net.parameters())[:-1]
    else:
        fn, params = GaussianEnergy(loc, torch.eye(3, dtype=D64) * 2), [loc]
    particles = _particles()
    out = []
    for objective in (ExactObjective(), ExactObjective().compiled(AOT)):
        value = objective(fn, particles)
        out.append((value, torch.autograd.grad(value.sum(), params)))
    (v0, g0), (v1, g1) = out
    torch.testing.assert_close(v1, v0, rtol=1e-12, atol=1e-12)
    for a, b in zip(g0, g1, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)


def test_a_failing_compiler_warns_once_and_runs_eagerly():
    fn, particles = FunctionEnergy(_net(), 3), _particles()
    objective = ExactObjective().compiled({"backend": _broken_backend})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first, second = objective(fn, particles), objective(fn, particles)
    messages = [str(w.message) for w in caught if "torch.compile failed" in str(w.message)]
    assert len(messages) == 1 and "running eagerly" in messages[0]
    eager = ExactObjective()(fn, particles)
    torch.testing.assert_close(first, eager)
    torch.testing.assert_close(second, eager)


def test_compiled_is_a_copy_and_checks_its_argument():
    sliced = SlicedObjective(num_projections=3)
    compiled = sliced.compiled(AOT)
    assert compiled is not sliced and compiled.num_projections == 3
    assert compiled.compile == AOT and sliced.compile is False
    with pytest.raises(TypeError, match="compile"):
        sliced.compiled("yes")


def test_loss_compile_option_gives_the_eager_loss_and_gradients():
    net = _net()
    params = list(net.parameters())[:-1]
    torch.manual_seed(2)
    x = torch.randn(20, 3, dtype=D64)

    def model(data):
        pyro.module("energy", net)
        with pyro.plate("rows", data.shape[0]):
            pyro_msm.observe("x", FunctionEnergy(net, 3), obs=data)

    out = []
    for compile_option in (False, AOT):
        pyro.clear_param_store()
        loss = MissingScoreMatching("iw", 1, compile=compile_option)
        for p in params:
            p.grad = None
        value = loss.loss_and_grads(model, no_guide, x)  # complete rows: deterministic
        out.append((value, [p.grad.clone() for p in params]))
    (v0, g0), (v1, g1) = out
    assert v1 == pytest.approx(v0, rel=1e-12)
    for a, b in zip(g0, g1, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)
