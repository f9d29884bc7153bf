"""Tests for the coordinate-level masked data site :func:`pyro_msm.observe`."""

from __future__ import annotations

import numpy as np
import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro.distributions import constraints

from pyro_msm import MissingScoreMatching, observe
from pyro_msm.distributions import GaussianEnergy
from pyro_msm.primitives import MissingCoordinates

N, D = 6, 3
NAN = float("nan")


def energy(d: int = D) -> GaussianEnergy:
    return GaussianEnergy(torch.linspace(-1.0, 1.0, d), 2.0 * torch.eye(d))


def table(n: int = N, d: int = D, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def coordinate_mask(n: int = N, d: int = D, seed: int = 2) -> torch.Tensor:
    mask = torch.rand(n, d, generator=torch.Generator().manual_seed(seed)) > 0.4
    mask[0] = torch.tensor([True, False, True])[:d]  # at least one mixed row, for certain
    return mask


def trace_site(obs, obs_mask=None, fn=None, name="x"):
    """Trace ``observe`` inside a plate over the rows of ``obs``."""
    fn = energy(obs.shape[-1]) if fn is None else fn

    def model():
        with pyro.plate("data", obs.shape[0]):
            return observe(name, fn, obs, obs_mask)

    return poutine.trace(model).get_trace()


def param_model(obs, obs_mask=None):
    loc = pyro.param("loc", torch.full((D,), 0.5))
    tril = pyro.param("L", 1.5 * torch.eye(D), constraint=constraints.lower_cholesky)
    with pyro.plate("data", obs.shape[0]):
        return observe("x", GaussianEnergy(loc, precision_tril=tril), obs, obs_mask)


# ----------------------------------------------------------------------------------------------
# sites, shapes, merged value
# ----------------------------------------------------------------------------------------------


def test_site_names_shapes_and_roles():
    obs, mask = table(), coordinate_mask()
    trace = trace_site(obs, mask)
    samples = [k for k, s in trace.nodes.items() if s["type"] == "sample"]
    assert samples == ["data", "x_unobserved", "x_observed", "x"]

    unobs, observed, merged = (trace.nodes[k] for k in ("x_unobserved", "x_observed", "x"))
    assert not unobs["is_observed"]
    assert observed["is_observed"]
    for site in (unobs, observed, merged):
        assert site["value"].shape == (N, D)
        assert [f.name for f in site["cond_indep_stack"]] == ["data"]
    # the unobserved site is the plugin's carrier with zero density and the site's mask
    assert isinstance(unobs["fn"], MissingCoordinates)
    assert unobs["fn"].batch_shape == (N,) and unobs["fn"].event_shape == (D,)
    assert torch.equal(unobs["fn"].observed_mask, mask)
    assert torch.equal(unobs["fn"].log_prob(unobs["value"]), torch.zeros(N))
    # the joint unnormalised density is carried by the observed site, at the completed rows
    assert observed["fn"].batch_shape == (N,) and observed["fn"].event_shape == (D,)
    expected_lp = energy().log_prob(merged["value"])
    assert torch.allclose(observed["fn"].log_prob(observed["value"]), expected_lp)
    # the model returns the merged value
    assert torch.equal(trace.nodes["_RETURN"]["value"], merged["value"])


def test_merged_value_takes_data_where_observed_and_draws_elsewhere():
    obs, mask = table(), coordinate_mask()
    obs_with_junk = torch.where(mask, obs, torch.full_like(obs, 1e6))  # junk in missing entries
    trace = trace_site(obs_with_junk, mask)
    drawn = trace.nodes["x_unobserved"]["value"]
    merged = trace.nodes["x"]["value"]
    assert torch.equal(merged[mask], obs[mask])
    assert torch.equal(merged[~mask], drawn[~mask])
    assert torch.equal(trace.nodes["x_observed"]["value"], merged)
    assert merged.abs().max() < 1e5  # the junk placeholders never leak
    # the carrier holds the data with missing entries zero-filled
    data = trace.nodes["x_unobserved"]["fn"].data
    assert torch.equal(data, torch.where(mask, obs, torch.zeros(())))


def test_fully_observed_site_returns_the_data():
    obs = table()
    trace = trace_site(obs)
    assert torch.equal(trace.nodes["x"]["value"], obs)
    assert torch.equal(trace.nodes["x_observed"]["value"], obs)


# ----------------------------------------------------------------------------------------------
# NaN means missing
# ----------------------------------------------------------------------------------------------


def nan_table() -> torch.Tensor:
    obs = table()
    obs[0, 1] = NAN
    obs[2, 0] = NAN
    obs[2, 2] = NAN
    obs[4, 1] = NAN
    return obs


def test_nan_marks_missing_and_never_reaches_trace_values():
    obs = nan_table()
    trace = trace_site(obs)
    mask = trace.nodes["x_unobserved"]["fn"].observed_mask
    assert torch.equal(mask, ~torch.isnan(obs))
    for name in ("x_unobserved", "x_observed", "x"):
        assert torch.isfinite(trace.nodes[name]["value"]).all(), name
    assert torch.isfinite(trace.nodes["x_unobserved"]["fn"].data).all()
    merged = trace.nodes["x"]["value"]
    assert torch.equal(merged[mask], obs[mask])
    assert torch.equal(merged[~mask], trace.nodes["x_unobserved"]["value"][~mask])


def test_nan_input_gives_finite_gradients():
    obs = nan_table()
    # the model's own joint log density
    trace = poutine.trace(param_model).get_trace(obs)
    trace.log_prob_sum().backward()
    store = dict(pyro.get_param_store().named_parameters())
    for name, p in store.items():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
        p.grad = None
    # and through the score-matching loss
    loss = MissingScoreMatching("iw", 5).differentiable_loss(param_model, None, obs)
    assert torch.isfinite(loss)
    loss.backward()
    for name, p in store.items():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_nan_in_entry_marked_missing_is_fine_with_explicit_mask():
    obs, mask = table(), coordinate_mask()
    obs = torch.where(mask, obs, torch.full_like(obs, NAN))
    obs[~mask & (torch.arange(D) == 0)] = float("inf")  # inf placeholders are fine too
    trace = trace_site(obs, mask)
    assert torch.isfinite(trace.nodes["x"]["value"]).all()


# ----------------------------------------------------------------------------------------------
# mask forms
# ----------------------------------------------------------------------------------------------


def test_row_level_mask_expands_to_coordinates():
    obs = table()
    rows = torch.tensor([True, False, True, True, False, True])
    trace = trace_site(obs, rows)
    mask = trace.nodes["x_unobserved"]["fn"].observed_mask
    assert torch.equal(mask, rows[:, None].expand(N, D))
    merged, drawn = trace.nodes["x"]["value"], trace.nodes["x_unobserved"]["value"]
    assert torch.equal(merged[rows], obs[rows])
    assert torch.equal(merged[~rows], drawn[~rows])


def test_row_level_mask_on_square_data_is_not_read_as_columns():
    # n == d: Pyro's own obs_mask silently returns an (n, n, d) value here (PYRO_NOTES 1)
    obs = table(D, D)
    rows = torch.tensor([True, False, True])
    trace = trace_site(obs, rows)
    assert trace.nodes["x"]["value"].shape == (D, D)
    mask = trace.nodes["x_unobserved"]["fn"].observed_mask
    assert torch.equal(mask, torch.tensor([[True] * D, [False] * D, [True] * D]))


@pytest.mark.parametrize("value", [True, False])
def test_scalar_row_mask(value):
    trace = trace_site(table(), torch.tensor(value))
    mask = trace.nodes["x_unobserved"]["fn"].observed_mask
    assert mask.shape == (N, D) and bool(mask.all()) == value and bool(mask.any()) == value


@pytest.mark.parametrize(
    "convert",
    [
        lambda m: m.long(),
        lambda m: m.to(torch.uint8),
        lambda m: m.float(),
        lambda m: m.double(),
        lambda m: m.numpy(),
        lambda m: m.numpy().astype(np.float32),
        lambda m: m.numpy().astype(np.int64),
    ],
    ids=["int64", "uint8", "float32", "float64", "numpy-bool", "numpy-float", "numpy-int"],
)
def test_boolean_like_masks_match_the_boolean_mask(convert):
    obs, mask = table(), coordinate_mask()
    pyro.set_rng_seed(3)
    reference = trace_site(obs, mask)
    pyro.set_rng_seed(3)
    trace = trace_site(obs, convert(mask))
    got = trace.nodes["x_unobserved"]["fn"].observed_mask
    assert got.dtype == torch.bool
    assert torch.equal(got, mask)
    assert torch.equal(trace.nodes["x"]["value"], reference.nodes["x"]["value"])


def test_row_level_integer_mask():
    rows = torch.tensor([1, 0, 1, 1, 0, 1])
    trace = trace_site(table(), rows)
    mask = trace.nodes["x_unobserved"]["fn"].observed_mask
    assert torch.equal(mask, rows.bool()[:, None].expand(N, D))


def test_numpy_inputs_give_the_same_site_and_loss_as_tensors():
    obs = nan_table()
    obs_np = obs.double().numpy()  # numpy's default float64
    trace = trace_site(obs_np)
    merged = trace.nodes["x"]["value"]
    assert isinstance(merged, torch.Tensor)
    assert merged.dtype == torch.get_default_dtype()
    mask = trace.nodes["x_unobserved"]["fn"].observed_mask
    assert torch.equal(mask, ~torch.isnan(obs))
    assert torch.equal(merged[mask], obs[mask])
    # end to end: numpy data (with a numpy mask) against a float32 model
    mask_np = (~np.isnan(obs_np)).astype(np.int64)
    loss = MissingScoreMatching("closed_form")
    from_numpy = loss.loss(param_model, None, np.nan_to_num(obs_np), mask_np)
    from_torch = loss.loss(param_model, None, obs)
    assert np.isfinite(from_numpy)
    assert from_numpy == pytest.approx(from_torch, rel=1e-6)


# ----------------------------------------------------------------------------------------------
# subsampled plates
# ----------------------------------------------------------------------------------------------


def test_subsampled_plate_scales_and_selects_rows():
    full, b = 10, 4
    obs = table(full)
    obs[1, 2] = NAN
    obs[7, 0] = NAN

    def model():
        with pyro.plate("data", full, subsample_size=b) as idx:
            return observe("x", energy(), obs[idx])

    trace = poutine.trace(model).get_trace()
    idx = trace.nodes["data"]["value"]
    assert idx.shape == (b,) and len(set(idx.tolist())) == b
    rows = obs[idx]
    observed = trace.nodes["x_observed"]
    assert observed["scale"] == pytest.approx(full / b)
    assert trace.nodes["x_unobserved"]["scale"] == pytest.approx(full / b)
    mask = ~torch.isnan(rows)
    assert torch.equal(trace.nodes["x_unobserved"]["fn"].observed_mask, mask)
    assert observed["value"].shape == (b, D)
    assert torch.equal(observed["value"][mask], rows[mask])
    assert torch.isfinite(observed["value"]).all()


def test_explicit_subsample_with_coordinate_mask():
    full = 10
    obs, mask = table(full), coordinate_mask(full)
    idx = torch.tensor([8, 2, 5])

    def model():
        with pyro.plate("data", full, subsample=idx) as i:
            return observe("x", energy(), obs[i], mask[i])

    trace = poutine.trace(model).get_trace()
    observed = trace.nodes["x_observed"]
    assert observed["scale"] == pytest.approx(full / 3)
    assert torch.equal(observed["value"][mask[idx]], obs[idx][mask[idx]])
    assert torch.equal(trace.nodes["x_unobserved"]["fn"].observed_mask, mask[idx])


# ----------------------------------------------------------------------------------------------
# bad input: a clear error naming the site and the problem
# ----------------------------------------------------------------------------------------------


def _obs_with(value, row=1, col=2):
    obs = table()
    obs[row, col] = value
    return obs


BAD_INPUTS = {
    "mask-wrong-coordinate-shape": (
        lambda: (energy(), table(), torch.ones(N, D + 1, dtype=torch.bool)),
        ValueError,
        r"site 'bad_site'.*obs_mask has shape \(6, 4\)",
    ),
    "mask-wrong-row-shape": (
        lambda: (energy(), table(), torch.ones(N + 1, dtype=torch.bool)),
        ValueError,
        r"site 'bad_site'.*obs_mask has shape \(7,\)",
    ),
    "mask-per-column": (
        lambda: (energy(), table(), torch.ones(1, D, dtype=torch.bool)),
        ValueError,
        r"site 'bad_site'.*obs_mask has shape \(1, 3\)",
    ),
    "obs-wrong-event-shape": (
        lambda: (energy(), table(N, D + 1), None),
        ValueError,
        r"site 'bad_site'.*obs has shape \(6, 4\).*event shape \(3,\)",
    ),
    "mask-other-device": (
        lambda: (energy(), table(), torch.ones(N, D, dtype=torch.bool, device="meta")),
        ValueError,
        r"site 'bad_site'.*obs_mask is on meta but obs is on cpu",
    ),
    "obs-other-device": (
        lambda: (energy(), torch.ones(N, D, device="meta"), torch.ones(N, D, dtype=torch.bool)),
        ValueError,
        r"site 'bad_site'.*obs_mask is on cpu but obs is on meta",
    ),
    "obs-integer-dtype": (
        lambda: (energy(), torch.ones(N, D, dtype=torch.long), None),
        TypeError,
        r"site 'bad_site'.*floating point.*int64",
    ),
    "obs-not-a-tensor": (
        lambda: (energy(), table().tolist(), None),
        TypeError,
        r"site 'bad_site'.*obs must be a tensor.*list",
    ),
    "nan-marked-observed": (
        lambda: (energy(), _obs_with(NAN), torch.ones(N, D, dtype=torch.bool)),
        ValueError,
        r"site 'bad_site'.*1 entries marked observed are NaN or infinite",
    ),
    "nan-in-observed-row": (
        lambda: (energy(), _obs_with(NAN), torch.ones(N, dtype=torch.bool)),
        ValueError,
        r"site 'bad_site'.*1 entries marked observed are NaN or infinite",
    ),
    "inf-without-mask": (
        lambda: (energy(), _obs_with(float("inf")), None),
        ValueError,
        r"site 'bad_site'.*1 entries marked observed are NaN or infinite",
    ),
    "neg-inf-with-mask": (
        lambda: (energy(), _obs_with(float("-inf")), coordinate_mask() | True),
        ValueError,
        r"site 'bad_site'.*NaN or infinite",
    ),
    "mask-float-fraction": (
        lambda: (energy(), table(), torch.full((N, D), 0.5)),
        TypeError,
        r"site 'bad_site'.*obs_mask must be boolean-like",
    ),
    "mask-int-two": (
        lambda: (energy(), table(), torch.full((N, D), 2)),
        TypeError,
        r"site 'bad_site'.*obs_mask must be boolean-like",
    ),
    "mask-float-nan": (
        lambda: (energy(), table(), torch.full((N, D), NAN)),
        TypeError,
        r"site 'bad_site'.*obs_mask must be boolean-like",
    ),
    "mask-complex": (
        lambda: (energy(), table(), torch.ones(N, D, dtype=torch.complex64)),
        TypeError,
        r"site 'bad_site'.*obs_mask must be boolean-like",
    ),
    "mask-string": (
        lambda: (energy(), table(), "all"),
        TypeError,
        r"site 'bad_site'.*obs_mask must be a boolean tensor, got str",
    ),
    "fn-not-a-distribution": (
        lambda: (lambda x: -x.pow(2).sum(-1), table(), None),
        TypeError,
        r"site 'bad_site'.*fn must be a Pyro distribution",
    ),
    "fn-scalar-event": (
        lambda: (dist.Normal(0.0, 1.0), table(), None),
        ValueError,
        r"site 'bad_site'.*event shape \(d,\)",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_bad_input_raises_a_clear_error(case):
    build, error, pattern = BAD_INPUTS[case]
    fn, obs, obs_mask = build()
    with pytest.raises(error, match=pattern):
        observe("bad_site", fn, obs, obs_mask)


def test_bad_input_inside_a_model_names_the_site():
    obs = _obs_with(NAN)

    def model():
        with pyro.plate("rows", N):
            observe("heights", energy(), obs, torch.ones(N, D))

    with pytest.raises(ValueError, match=r"site 'heights'.*NaN or infinite"):
        MissingScoreMatching("zeroed").loss(model, None)


@pytest.mark.parametrize("kind", ["gaussian", "mlp", "pyro"])
def test_data_and_parameter_dtypes_must_agree(kind):
    from pyro_msm.distributions import EnergyMLP, MLPEnergy

    if kind == "gaussian":
        fn = GaussianEnergy(torch.zeros(3), torch.eye(3))
    elif kind == "mlp":
        fn = MLPEnergy(EnergyMLP(3, hidden_dims=(8,)))
    else:
        fn = dist.MultivariateNormal(torch.zeros(3), scale_tril=torch.eye(3))
    x = torch.randn(4, 3, dtype=torch.float64)
    with pytest.raises(TypeError, match=r"site 'x': obs is torch.float64 .* torch.float32"):
        observe("x", fn, obs=x)
    observe("x", fn, obs=x.float())  # the same site with matching dtypes is fine


def test_empty_table_is_refused():
    with pytest.raises(ValueError, match="site 'x': obs has no rows"):
        observe("x", GaussianEnergy(torch.zeros(3), torch.eye(3)), obs=torch.zeros(0, 3))


def test_checks_are_reused_only_while_the_same_tensors_come_back_unmodified(monkeypatch):
    """An SVI loop passes the same ``obs`` at every step: the NaN check and the zero-filled data
    are computed once; an in-place change of ``obs`` or its mask, or a new tensor, is checked
    again (the same error as a first call)."""
    import pyro_msm.primitives as primitives

    calls = []
    checked = primitives._as_mask
    monkeypatch.setattr(
        primitives,
        "_as_mask",
        lambda *a: calls.append(1) or checked(*a),  # count fresh checks
    )
    x, mask = table(), coordinate_mask()
    first = trace_site(x, mask).nodes["x_observed"]["infer"]["pyro_msm"]["data"]
    again = trace_site(x, mask).nodes["x_observed"]["infer"]["pyro_msm"]["data"]
    assert len(calls) == 1 and again is first
    assert torch.equal(first, torch.where(mask, x, torch.zeros(())))
    x[1, 0] = 5.0  # in place: a new version of the same tensor
    mask[1, 0] = True
    value = trace_site(x, mask).nodes["x_observed"]["infer"]["pyro_msm"]["data"]
    assert len(calls) == 2 and value[1, 0] == 5.0
    x[1, 0] = NAN  # observed and NaN: refused although the same tensor passed before
    with pytest.raises(ValueError, match="NaN or infinite"):
        trace_site(x, mask)
    y = table(seed=7)
    assert torch.equal(trace_site(y).nodes["x"]["value"], y)  # a new tensor is checked anew
    assert len(calls) == 4


def test_memo_recomputes_after_an_in_place_change_and_never_for_grad_tensors():
    """What the loss derives from a data set's mask (row groups, counts) is computed once per
    tensor version: a stale value after an in-place change would silently mis-group rows."""
    from pyro_msm.infer.sites import memo

    mask = coordinate_mask()
    calls = []

    def rows_with_missing():
        calls.append(1)
        return (~mask).any(-1).nonzero().squeeze(-1)

    first = memo(mask, "rows", rows_with_missing)
    assert memo(mask, "rows", rows_with_missing) is first and len(calls) == 1
    mask[:] = True  # in place: no row misses anything now
    assert memo(mask, "rows", rows_with_missing).numel() == 0 and len(calls) == 2
    x = table().requires_grad_()
    assert memo(x, "sum", lambda: x.sum()).requires_grad  # computed, never stored
    assert not hasattr(x, "_pyro_msm_memo")


def test_data_site_knows_whether_its_rows_are_scaled_without_reading_the_device():
    """Pyro records a plain or subsampled plate's scale as a number: the loss reads whether rows
    are subsampled from it (N / batch); a tensor scale (poutine.scale) is read off the tensor."""
    from pyro_msm.infer.sites import find_data_sites

    x = table()

    def model(size=None, scale=None):
        with pyro.plate("data", N, subsample=None if size is None else torch.arange(size)):
            rows = x if size is None else x[:size]
            if scale is None:
                return observe("x", energy(), rows)
            with poutine.scale(scale=scale):
                return observe("x", energy(), rows)

    plain = find_data_sites(poutine.trace(model).get_trace())[0]
    assert plain.constant_scale == 1.0 and not plain.subsampled
    half = find_data_sites(poutine.trace(model).get_trace(size=N // 2))[0]
    assert half.constant_scale == pytest.approx(2.0) and half.subsampled
    assert torch.allclose(half.scale, torch.full((N // 2,), 2.0, dtype=x.dtype))
    weights = torch.ones(N, dtype=x.dtype)
    same = find_data_sites(poutine.trace(model).get_trace(scale=weights))[0]
    assert same.constant_scale is None and not same.subsampled
    weights[2] = 3.0
    scaled = find_data_sites(poutine.trace(model).get_trace(scale=weights))[0]
    assert scaled.constant_scale is None and scaled.subsampled


# ----------------------------------------------------------------------------------------------
# torch.inference_mode
# ----------------------------------------------------------------------------------------------


def _inference_problem(seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """A 40-row table with about a third of its entries missing (NaN) and its mask."""
    full = table(40, D, seed=seed)
    mask = torch.rand(40, D, generator=torch.Generator().manual_seed(seed + 1)) > 0.35
    mask[:, 0] |= ~mask.any(-1)  # every row observes something
    return torch.where(mask, full, torch.full((), NAN)), mask


def _loss_value(loss, guide, obs, obs_mask=None) -> float:
    pyro.set_rng_seed(11)  # the same importance draws / guide samples for every call
    return float(loss.loss(param_model, guide, obs, obs_mask))


@pytest.mark.parametrize(
    "estimator, objective",
    [
        ("iw", "exact"),
        ("iw", "denoising"),
        ("iw", "sliced"),
        ("variational", "exact"),
        ("hybrid", "exact"),
        ("em", "exact"),
        ("zeroed", "exact"),
        ("mean_impute", "exact"),
        ("complete_case", "exact"),
        ("closed_form", "exact"),
    ],
)
@pytest.mark.parametrize("masked", [False, True], ids=["nan", "obs_mask"])
def test_a_loss_under_inference_mode_equals_its_value_under_no_grad(estimator, objective, masked):
    """A held-out loss is commonly computed under ``torch.inference_mode()``: on inference tensors
    (which have no version counter) and on normal ones, it is the value computed under
    ``no_grad``; an in-place change of an inference tensor inside inference mode (which no
    version counter records) is seen, not answered from a value remembered from before it; and
    a training step on the same tensors afterwards has the gradient it has without the
    evaluation (nothing computed in inference mode is kept for it)."""
    from pyro_msm.guides import GaussianConditionalGuide

    pyro.clear_param_store()
    guided = estimator in ("variational", "hybrid")
    guide = GaussianConditionalGuide(param_model) if guided else None
    loss = MissingScoreMatching(estimator, 5, objective=objective)
    x, mask = _inference_problem()
    args = (torch.nan_to_num(x), mask) if masked else (x,)
    with torch.no_grad():
        expected = _loss_value(loss, guide, *args)  # (creates the parameters outside)
        changed = [a.clone() for a in args]
        changed[0][2, 1] = 3.0  # observed in either form: the loss depends on it
        if masked:
            changed[1][2, 1] = True
        expected_changed = _loss_value(loss, guide, *changed)
    assert expected_changed != pytest.approx(expected)
    with torch.inference_mode():
        fresh = [a.clone() for a in args]  # inference tensors
        assert all(a.is_inference() for a in fresh)
        assert _loss_value(loss, guide, *fresh) == pytest.approx(expected, rel=1e-6)
        assert _loss_value(loss, guide, *fresh) == pytest.approx(expected, rel=1e-6)
        fresh[0][2, 1] = 3.0  # in place, inside inference mode: no version counter sees it
        if masked:
            fresh[1][2, 1] = True
        assert _loss_value(loss, guide, *fresh) == pytest.approx(expected_changed, rel=1e-6)
        assert _loss_value(loss, guide, *args) == pytest.approx(expected, rel=1e-6)  # normal

    def gradients(evaluate_first: bool) -> list[torch.Tensor]:
        obs = [a.clone() for a in args]  # tensors that no step has seen yet
        if evaluate_first:
            with torch.inference_mode():
                _loss_value(loss, guide, *obs)
        pyro.set_rng_seed(12)
        with poutine.trace(param_only=True) as tape:
            value = loss.differentiable_loss(param_model, guide, *obs)
        params = [site["value"].unconstrained() for site in tape.trace.nodes.values()]
        return list(torch.autograd.grad(value, params))

    for with_evaluation, without in zip(gradients(True), gradients(False), strict=True):
        torch.testing.assert_close(with_evaluation, without)


def test_memo_under_inference_mode_stores_nothing_it_could_not_validate_or_reuse():
    """An inference tensor has no version counter and may change in place inside inference mode:
    what is derived from it is computed at every call (always the current value), never stored.
    A normal tensor's remembered values are used inside inference mode; a value computed there
    is stored only if it holds no inference tensor; an in-place change still invalidates."""
    from pyro_msm._memo import memo, storable

    def rows(m):
        return lambda: (~m).any(-1).nonzero().squeeze(-1)

    with torch.inference_mode():
        mask = coordinate_mask()
        first = memo(mask, "rows", rows(mask))
        assert torch.equal(first, (~mask).any(-1).nonzero().squeeze(-1))
        assert not hasattr(mask, "_pyro_msm_memo")
        mask[:] = True  # in place
        assert memo(mask, "rows", rows(mask)).numel() == 0  # the current value, not `first`

    mask = coordinate_mask()  # a normal tensor
    outside = memo(mask, "rows", rows(mask))
    with torch.inference_mode():
        assert memo(mask, "rows", rows(mask)) is outside  # remembered, used inside
        inside = memo(mask, "counts", lambda: mask.sum(-1))
        assert inside.is_inference() and torch.equal(inside, mask.sum(-1))
        assert memo(mask, "complete", lambda: bool(mask.all())) is False
    assert "counts" not in mask._pyro_msm_memo[1]  # an inference tensor: not kept
    assert mask._pyro_msm_memo[1]["complete"] is False  # a number: kept
    counts = memo(mask, "counts", lambda: mask.sum(-1))
    assert not counts.is_inference() and torch.equal(counts, mask.sum(-1))
    mask[:] = True  # in place: everything is computed again
    assert memo(mask, "rows", rows(mask)).numel() == 0
    assert memo(mask, "complete", lambda: bool(mask.all())) is True
    with torch.inference_mode():
        inference = torch.ones(2)
    assert storable((1, 2.0, "a", None, {"k": [torch.ones(2)]}))
    assert not storable((torch.ones(2), [inference]))
    assert not storable(object())


def test_observe_checks_inference_tensors_at_every_call():
    """The validated data of a site are reused while the same tensors come back unmodified, which
    an inference tensor (no version counter) cannot show: it is checked at every call, so an
    observed NaN written in place inside inference mode is refused, not passed over."""
    with torch.inference_mode():
        x, mask = table(), coordinate_mask()
        data = trace_site(x, mask).nodes["x_observed"]["infer"]["pyro_msm"]["data"]
        assert torch.equal(data, torch.where(mask, x, torch.zeros(())))
        x[0, 0] = NAN  # observed (row 0 is [True, False, True])
        with pytest.raises(ValueError, match="NaN or infinite"):
            trace_site(x, mask)
