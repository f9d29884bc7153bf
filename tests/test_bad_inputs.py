"""The catalogue of bad set-ups (issue 12): each refused with a clear error or warning that names
the argument or site, or handled correctly. One row per case: a callable, the expected error or
warning class, and a fragment of its message (docs/errors.md lists the same cases)."""

from __future__ import annotations

import math
import warnings

import pyro
import pytest
import torch
from pyro.distributions import constraints
from pyro.infer.autoguide import AutoNormal

import pyro_msm
from pyro_msm.distributions import GaussianEnergy
from pyro_msm.guides import GaussianConditionalGuide, no_guide
from pyro_msm.infer import FitHealth, FitHealthError, FitHealthWarning, MissingScoreMatching
from pyro_msm.missingness import apply_mask, mcar_mask

D = 3


def table(n: int = 40, rate: float = 0.3, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, D, generator=g, dtype=dtype)
    mask = mcar_mask((n, D), rate, seed=1)
    mask[:, 0] = True  # every row keeps an observed coordinate
    return apply_mask(x, mask)


def model_for(precision=None, subsample_size=None, tril=False):
    def model(data):
        loc = pyro.param("loc", torch.zeros(D, dtype=data.dtype))
        if tril:
            fn = GaussianEnergy(loc, precision_tril=precision)
        else:
            p = torch.eye(D, dtype=data.dtype) if precision is None else precision
            fn = GaussianEnergy(loc, p)
        with pyro.plate("rows", data.shape[0], subsample_size=subsample_size) as idx:
            pyro_msm.observe("x", fn, obs=data[idx])

    return model


def loss(estimator: str = "iw", guide=no_guide, data=None, model=None, **kwargs) -> float:
    data = table() if data is None else data
    model = model_for() if model is None else model
    return MissingScoreMatching(estimator, **kwargs).loss(model, guide, data)


def huge(dtype=torch.float32, value=1e20) -> torch.Tensor:
    x = table(dtype=dtype)
    x[0, 0] = value
    return x


def nan_parameter() -> None:
    data = table()
    model = model_for()
    pyro.param("loc", torch.tensor([0.0, math.nan, 0.0]))
    svi = pyro.infer.SVI(model, no_guide, pyro.optim.Adam({"lr": 0.1}), MissingScoreMatching())
    svi.step(data)


def one_dim_obs_in_plate() -> None:
    def model(data):
        with pyro.plate("rows", 10):
            pyro_msm.observe("x", GaussianEnergy(torch.zeros(10), torch.eye(10)), obs=data)

    MissingScoreMatching().loss(model, no_guide, torch.randn(10))


def empty_plate() -> None:
    loss(data=torch.zeros(0, D))


def trained_indefinite_sample() -> None:
    p = (-torch.eye(D)).requires_grad_()
    GaussianEnergy(torch.zeros(D), p).sample((3,))


def unavailable_device():
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    mcar_mask((3, 3), 0.2, device="cuda")


def graphical_zero_penalties():
    from pyro_msm.graphical import GraphicalScoreMatching

    GraphicalScoreMatching(num_penalties=0).fit(table().numpy())


CATALOGUE = [
    # item 1: guided estimators without a guide of the missing coordinates
    ("variational-no-guide", lambda: loss("variational"), ValueError, "samples no 'x_unobserved'"),
    ("hybrid-no-guide", lambda: loss("hybrid"), ValueError, "would come from the model's joint"),
    # item 2: a precision that is not positive definite
    (
        "precision-negative",
        lambda: GaussianEnergy(torch.zeros(D), -torch.eye(D)),
        ValueError,
        "not positive definite",
    ),
    (
        "precision-indefinite",
        lambda: GaussianEnergy(torch.zeros(2), torch.tensor([[1.0, 2.0], [2.0, 1.0]])),
        ValueError,
        "constraints.lower_cholesky",
    ),
    (
        "precision-nan",
        lambda: GaussianEnergy(torch.zeros(D), torch.full((D, D), math.nan)),
        ValueError,
        "NaN or infinite",
    ),
    (
        "precision-tril-singular",
        lambda: GaussianEnergy(torch.zeros(D), precision_tril=torch.zeros(D, D)),
        ValueError,
        "from precision_tril",
    ),
    ("precision-in-model", lambda: loss(model=model_for(-torch.eye(D))), ValueError, "definite"),
    ("trained-indefinite-sample", trained_indefinite_sample, ValueError, "not positive definite"),
    # item 3: data that overflow float32
    ("huge-zeroed", lambda: loss("zeroed", data=huge()), FitHealthError, "Standardise"),
    ("huge-mean-impute", lambda: loss("mean_impute", data=huge()), FitHealthError, "Standardise"),
    (
        "huge-complete-case",
        lambda: loss("complete_case", data=huge()),
        FitHealthError,
        "site 'x'",
    ),
    ("huge-iw", lambda: loss("iw", data=huge()), FitHealthError, "overflow"),
    (
        "huge-variational",
        lambda: loss("variational", guide=AutoNormal(model_for()), data=huge()),
        FitHealthError,
        "Standardise",
    ),
    (
        "huge-gaussian-guide",
        lambda: loss("variational", guide=GaussianConditionalGuide(model_for()), data=huge()),
        FitHealthError,
        "GaussianConditionalGuide data",
    ),
    ("large-warns", lambda: loss("zeroed", data=huge(value=1e7)), FitHealthWarning, "reach 1e+07"),
    # item 6: non-finite parameters
    ("nan-parameter", nan_parameter, FitHealthError, "non-finite parameter(s): loc"),
    # item 7: unclear errors from inside dependencies
    ("empty-plate", empty_plate, ValueError, "has size 0"),
    ("one-dim-obs-in-plate", one_dim_obs_in_plate, ValueError, "one row per plate entry"),
    (
        "subsample-too-large",
        lambda: loss(model=model_for(subsample_size=100)),
        ValueError,
        "subsample_size 100 but only 40 rows",
    ),
    ("num-penalties-zero", graphical_zero_penalties, ValueError, "num_penalties"),
    ("mcar-mask-device", unavailable_device, ValueError, "device='cuda' is not available"),
    ("num-particles-fraction", lambda: MissingScoreMatching("iw", 2.7), TypeError, "truncated"),
    ("num-particles-zero", lambda: MissingScoreMatching("iw", 0), ValueError, "num_particles"),
    (
        "guide-particles-text",
        lambda: MissingScoreMatching("iw", guide_particles="2"),
        TypeError,
        "guide_particles",
    ),
    ("guide-steps-negative", lambda: MissingScoreMatching(guide_steps=-1), ValueError, "least 0"),
    # options of the health monitor itself
    ("health-type", lambda: MissingScoreMatching(health="yes"), TypeError, "health must be"),
    ("health-fraction", lambda: FitHealth(ess_fraction=2.0), ValueError, "ess_fraction"),
    (
        "closed-form-sliced",
        lambda: MissingScoreMatching("closed_form", objective="sliced"),
        ValueError,
        "only objective='exact'",
    ),
]


@pytest.mark.parametrize(
    "case, expected, fragment",
    [pytest.param(case, exp, fragment, id=name) for name, case, exp, fragment in CATALOGUE],
)
def test_catalogue(case, expected, fragment):
    if issubclass(expected, Warning):
        with pytest.warns(expected, match=None) as record:
            case()
        messages = [str(w.message) for w in record if issubclass(w.category, expected)]
        assert any(fragment in m for m in messages), messages
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            with pytest.raises(expected) as info:
                case()
        assert fragment in str(info.value), str(info.value)


# -- the correct handling of the neighbouring good inputs ---------------------------------------


def test_good_neighbours_are_accepted():
    assert MissingScoreMatching("iw", 10.0).num_particles == 10  # an integral float is fine
    GaussianEnergy(torch.zeros(D), 2 * torch.eye(D))  # positive definite: accepted
    tril = torch.eye(D).requires_grad_()  # a trained factor is not checked (no cost per step)
    GaussianEnergy(torch.zeros(D), precision_tril=tril)
    x = huge(dtype=torch.float64)  # 1e20 squared is representable in float64 ...
    with pytest.warns(FitHealthWarning, match="Standardise"):  # ... but still badly scaled
        assert math.isfinite(loss("zeroed", data=x, model=model_for(torch.eye(D).double())))


def test_guided_estimators_run_with_a_guide_and_complete_data_needs_none():
    assert math.isfinite(loss("variational", guide=AutoNormal(model_for())))
    pyro.clear_param_store()
    full = torch.randn(20, D)  # nothing missing: no conditional to draw, no guide needed
    assert math.isfinite(loss("variational", data=full))


def test_trained_precision_constrained_positive_definite_stays_a_density():
    """The documented remedy: a pyro.param with the positive-definite constraint."""
    data = table()

    def model(x):
        p = pyro.param("P", torch.eye(D), constraint=constraints.positive_definite)
        with pyro.plate("rows", x.shape[0]):
            pyro_msm.observe("x", GaussianEnergy(torch.zeros(D), p), obs=x)

    svi = pyro.infer.SVI(model, no_guide, pyro.optim.Adam({"lr": 0.5}), MissingScoreMatching())
    for _ in range(20):
        svi.step(data)
    p = pyro.param("P").detach()
    assert torch.linalg.eigvalsh(p).min() > 0
    GaussianEnergy(torch.zeros(D), p).sample((2,))


def test_trained_indefinite_precision_in_the_closed_form_is_refused_clearly():
    """A trained precision is not checked per step; if it turns indefinite, the closed form
    refuses it with the same clear error."""
    p = (-torch.eye(D)).requires_grad_()
    with pytest.raises(ValueError, match="not positive definite"):
        loss("closed_form", model=model_for(p))


def test_a_failed_factorisation_carries_a_note_with_its_causes():
    from pyro_msm.infer.validation import translate_errors

    @translate_errors
    @translate_errors  # nested entry points (loss calls differentiable_loss): one note
    def factorise():
        return torch.linalg.cholesky(-torch.eye(2))

    with pytest.raises(torch.linalg.LinAlgError) as info:
        factorise()
    if hasattr(info.value, "add_note"):  # Python >= 3.11
        notes = info.value.__notes__
        assert len(notes) == 1 and "not positive definite" in notes[0]
