"""Checkpoints resume SVI bit for bit; fitted estimators save and load."""

from __future__ import annotations

import pickle
import random

import numpy as np
import pyro
import pytest
import torch
from pyro.distributions import constraints
from pyro.infer import SVI

import pyro_msm
from pyro_msm.distributions import GaussianEnergy
from pyro_msm.guides import AmortizedNormal
from pyro_msm.persistence import (
    SaveLoadMixin,
    checkpoint_state,
    load_checkpoint,
    restore_checkpoint,
    save_checkpoint,
)

D = 3


def _table(n: int = 48) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(n, D, generator=g) @ torch.tensor([[1.0, 0.5, 0.0], [0, 1, 0.3], [0, 0, 1]])
    mask = torch.rand(n, D, generator=g) > 0.3
    mask[:, 0] = True
    return torch.where(mask, x, torch.tensor(float("nan")))


def _model_full(x):
    loc = pyro.param("loc", torch.zeros(D))
    tril = pyro.param("tril", torch.eye(D), constraint=constraints.lower_cholesky)
    with pyro.plate("rows", x.shape[0], subsample_size=16) as idx:
        pyro_msm.observe("x", GaussianEnergy(loc, tril @ tril.T), obs=x[idx])


STOP, TOTAL = 100, 200  # the protocol: stop at 100, resume to 200, against 200 straight
GUIDE_STEPS = 2  # model/guide cycle of 3: step 100 falls mid-cycle (100 % 3 == 1)


def _make(estimator: str):
    guide = AmortizedNormal(_model_full, hidden_dims=(8,)) if estimator == "variational" else None
    loss = pyro_msm.MissingScoreMatching(estimator, num_particles=4, guide_steps=GUIDE_STEPS)
    optim = pyro.optim.Adam({"lr": 0.02})
    return guide, loss, optim, SVI(_model_full, guide or (lambda x: None), optim, loss)


def _params():
    return {k: v.detach().clone() for k, v in pyro.get_param_store().named_parameters()}


def _scramble():
    """What a fresh process would have: other random states and other parameter values."""
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    with torch.no_grad():
        for _, p in pyro.get_param_store().named_parameters():
            p.add_(0.5)


def _straight(estimator: str, path):
    """An uninterrupted ``TOTAL``-step run that checkpoints at ``STOP`` (in memory and to
    ``path``) on the way; returns the final parameters, the in-memory state and the guide."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    x = _table()
    guide, loss, optim, svi = _make(estimator)
    state = None
    for step in range(TOTAL):
        if step == STOP:
            state = pickle.loads(pickle.dumps(checkpoint_state(optim, loss)))
            save_checkpoint(path, optim=optim, loss=loss)
        svi.step(x)
    return _params(), state, guide


def _resume(estimator: str, guide, state=None, path=None, keep_loss_state: bool = True):
    """Scramble, build a new loss, optimiser and SVI, restore, and run ``TOTAL - STOP`` steps."""
    x = _table()
    _scramble()
    _, loss, optim, _ = _make(estimator)
    svi = SVI(_model_full, guide or (lambda x: None), optim, loss)
    if path is not None:
        load_checkpoint(path, optim=optim, loss=loss)
    else:
        restore_checkpoint(state, optim=optim, loss=loss if keep_loss_state else None)
    for _ in range(STOP, TOTAL):
        svi.step(x)
    return _params()


@pytest.mark.parametrize("estimator", ["iw", "variational"])
def test_stop_at_100_and_resume_to_200_is_bit_identical(estimator, tmp_path):
    path = tmp_path / "fit.ckpt"
    straight, state, guide = _straight(estimator, path)
    resumed = _resume(estimator, guide, state=state)
    via_file = _resume(estimator, guide, path=path)
    assert set(straight) == set(resumed) == set(via_file)
    assert len(straight) > (2 if estimator == "variational" else 1)
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
        assert torch.equal(straight[name], via_file[name]), name
    # and the check can fail: without the loss's schedule state (a fresh loss starts its
    # model/guide cycle at a model step where the straight run took a guide step) the run differs
    if estimator == "variational":
        other = _resume(estimator, guide, state=state, keep_loss_state=False)
        assert any(not torch.equal(straight[k], other[k]) for k in straight)


def test_checkpoint_refuses_other_dicts():
    with pytest.raises(ValueError, match="checkpoint"):
        restore_checkpoint({"params": {}})


class _Thing(SaveLoadMixin):
    def __init__(self, value):
        self.value = value


class _Other(SaveLoadMixin):
    pass


def test_save_load_round_trip_and_errors(tmp_path):
    path = tmp_path / "thing.pkl"
    _Thing(torch.arange(3.0)).save(path)
    back = _Thing.load(path)
    assert torch.equal(back.value, torch.arange(3.0))
    with pytest.raises(ValueError, match="holds a _Thing"):
        _Other.load(path)
    junk = tmp_path / "junk.pkl"
    junk.write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="not a file written by"):
        _Thing.load(junk)


class _LossWithState:
    def __init__(self):
        self.counter = 0

    def state_dict(self):
        return {"counter": self.counter}

    def load_state_dict(self, state):
        self.counter = state["counter"] + 0  # a copy, as a real implementation would


def test_a_loss_state_dict_is_preferred_over_private_attributes():
    pyro.clear_param_store()
    loss = _LossWithState()
    loss.counter = 7
    state = checkpoint_state(None, loss)
    assert state["loss"] == {"state_dict": {"counter": 7}}
    loss.counter = 0
    restore_checkpoint(state, loss=loss)
    assert loss.counter == 7
