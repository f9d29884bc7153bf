"""Tests for the coordinate-level missingness simulators in :mod:`pyro_msm.missingness`."""

from __future__ import annotations

import math

import pytest
import torch

from pyro_msm.missingness import apply_mask, mar_mask, mcar_mask, missing_rate, mnar_mask

N = 20000
Z = 5.0  # tolerance in binomial standard errors; a false failure has probability < 1e-6


def binomial_tol(rate: float, count: int) -> float:
    """``Z`` binomial standard errors of a proportion estimated from ``count`` entries.

    For MAR/MNAR masks the entries are independent Bernoulli draws with varying probabilities
    whose mean is ``rate``; the variance of such a (Poisson-binomial) count is at most the
    binomial one, so this tolerance is conservative for all three simulators.
    """
    return Z * math.sqrt(rate * (1.0 - rate) / count)


def corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a = a.double() - a.double().mean()
    b = b.double() - b.double().mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.randn(N, 8, generator=torch.Generator().manual_seed(1234))


# ----------------------------------------------------------------------------------------------
# realised missing rates
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [0.1, 0.3, 0.6])
@pytest.mark.parametrize("n", [500, N])
def test_mcar_rate_matches_target(n: int, rate: float) -> None:
    d = 6
    mask = mcar_mask((n, d), rate, seed=7)
    assert mask.shape == (n, d) and mask.dtype == torch.bool
    assert abs(missing_rate(mask) - rate) < binomial_tol(rate, n * d)
    # each column, too (entries are i.i.d.)
    col_rates = (~mask).double().mean(0)
    assert torch.all((col_rates - rate).abs() < binomial_tol(rate, n))


def test_mcar_error_shrinks_with_n() -> None:
    rate, d = 0.3, 4
    errors = {n: abs(missing_rate(mcar_mask((n, d), rate, seed=3)) - rate) for n in (50, N)}
    # at n = 50 the realised rate is within the (wide) 5-SE band, at n = 20000 in the narrow one
    assert errors[50] < binomial_tol(rate, 50 * d)
    assert errors[N] < binomial_tol(rate, N * d)
    assert binomial_tol(rate, N * d) < 0.02


@pytest.mark.parametrize("rate", [0.1, 0.3, 0.6])
@pytest.mark.parametrize("n", [500, N])
def test_mar_rate_matches_target(x: torch.Tensor, n: int, rate: float) -> None:
    data = x[:n]
    d = data.shape[1]
    k = max(1, d // 4)  # default always-observed columns
    mask = mar_mask(data, rate, seed=11)
    assert mask.shape == data.shape and mask.dtype == torch.bool
    assert abs(missing_rate(mask) - rate) < binomial_tol(rate, n * d)
    # the default always-observed columns are the first k and are never missing
    assert mask[:, :k].all()
    # the remaining columns carry the inflated rate
    col_rate = rate * d / (d - k)
    col_rates = (~mask[:, k:]).double().mean(0)
    assert torch.all((col_rates - col_rate).abs() < binomial_tol(col_rate, n))


@pytest.mark.parametrize("rate", [0.1, 0.3, 0.6])
@pytest.mark.parametrize("n", [500, N])
def test_mnar_rate_matches_target_per_column(x: torch.Tensor, n: int, rate: float) -> None:
    data = x[:n]
    mask = mnar_mask(data, rate, seed=5)
    assert mask.shape == data.shape and mask.dtype == torch.bool
    col_rates = (~mask).double().mean(0)
    assert torch.all((col_rates - rate).abs() < binomial_tol(rate, n))


def test_mnar_calibration_handles_skewed_columns() -> None:
    g = torch.Generator().manual_seed(0)
    # heavily skewed, differently scaled and shifted columns
    data = torch.cat(
        [
            torch.empty(N, 1).exponential_(generator=g) * 100.0,
            torch.randn(N, 1, generator=g).exp() + 5.0,
            torch.randint(0, 3, (N, 1), generator=g).double(),
        ],
        dim=1,
    )
    rate = 0.25
    mask = mnar_mask(data, rate, strength=3.0, seed=1)
    col_rates = (~mask).double().mean(0)
    assert torch.all((col_rates - rate).abs() < binomial_tol(rate, N))


def test_mar_rate_on_dependent_columns() -> None:
    g = torch.Generator().manual_seed(2)
    base = torch.randn(N, 1, generator=g)
    data = base + 0.3 * torch.randn(N, 6, generator=g)  # strongly correlated columns
    rate = 0.2
    mask = mar_mask(data, rate, always_observed=[0, 1, 2], seed=4)
    assert abs(missing_rate(mask) - rate) < binomial_tol(rate, N * 6)
    assert mask[:, :3].all()


def test_zero_rate_gives_fully_observed_masks(x: torch.Tensor) -> None:
    assert mcar_mask((100, 3), 0.0, seed=0).all()
    assert mar_mask(x[:100], 0.0, seed=0).all()
    assert mnar_mask(x[:100], 0.0, seed=0).all()


def test_mar_rate_needing_full_columns_makes_them_all_missing() -> None:
    data = torch.randn(300, 4, generator=torch.Generator().manual_seed(0))
    mask = mar_mask(data, 0.75, seed=0)  # k = 1, other columns need rate 0.75 * 4 / 3 = 1
    assert mask[:, 0].all()
    assert not mask[:, 1:].any()
    assert missing_rate(mask) == 0.75


# ----------------------------------------------------------------------------------------------
# reproducibility
# ----------------------------------------------------------------------------------------------


SIMULATORS = {
    "mcar": lambda data, **kw: mcar_mask(tuple(data.shape), 0.3, **kw),
    "mar": lambda data, **kw: mar_mask(data, 0.3, **kw),
    "mnar": lambda data, **kw: mnar_mask(data, 0.3, **kw),
}


@pytest.mark.parametrize("name", sorted(SIMULATORS))
def test_same_seed_same_mask_other_seed_other_mask(x: torch.Tensor, name: str) -> None:
    sim = SIMULATORS[name]
    data = x[:2000]
    a = sim(data, seed=123)
    b = sim(data, seed=123)
    c = sim(data, seed=124)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # with ~12000 random entries the two masks differ in many places, not just a few
    assert (a != c).double().mean() > 0.1


@pytest.mark.parametrize("name", sorted(SIMULATORS))
def test_generator_overrides_seed(x: torch.Tensor, name: str) -> None:
    sim = SIMULATORS[name]
    data = x[:2000]
    from_generator = sim(data, seed=1, generator=torch.Generator().manual_seed(99))
    assert torch.equal(from_generator, sim(data, seed=99))
    assert not torch.equal(from_generator, sim(data, seed=1))


@pytest.mark.parametrize("name", sorted(SIMULATORS))
def test_generator_state_advances(x: torch.Tensor, name: str) -> None:
    sim = SIMULATORS[name]
    data = x[:2000]
    g = torch.Generator().manual_seed(5)
    first = sim(data, generator=g)
    second = sim(data, generator=g)
    assert not torch.equal(first, second)


@pytest.mark.parametrize("name", sorted(SIMULATORS))
def test_without_seed_uses_global_rng(x: torch.Tensor, name: str) -> None:
    sim = SIMULATORS[name]
    data = x[:2000]
    state = torch.get_rng_state()
    try:
        torch.manual_seed(2024)
        a = sim(data)
        torch.manual_seed(2024)
        b = sim(data)
        c = sim(data)
    finally:
        torch.set_rng_state(state)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_mar_does_not_modify_input(x: torch.Tensor) -> None:
    data = x[:1000].clone()
    before = data.clone()
    mar_mask(data, 0.3, seed=0)
    mnar_mask(data, 0.3, seed=0)
    assert torch.equal(data, before)


# ----------------------------------------------------------------------------------------------
# MAR structure
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "always_observed",
    [[1, 3], (3, 1, 1), [-7, 3], torch.tensor([1, 3]), [False, True, False, True] + [False] * 4],
    ids=["list", "tuple-with-duplicate", "negative-index", "tensor", "bool-list"],
)
def test_mar_always_observed_columns(x: torch.Tensor, always_observed: object) -> None:
    rate = 0.3
    mask = mar_mask(x, rate, always_observed=always_observed, seed=8)
    obs_cols = [1, 3]
    other = [j for j in range(8) if j not in obs_cols]
    assert mask[:, obs_cols].all()
    col_rate = rate * 8 / 6
    col_rates = (~mask[:, other]).double().mean(0)
    assert torch.all((col_rates - col_rate).abs() < binomial_tol(col_rate, N))


def test_mar_bool_tensor_always_observed(x: torch.Tensor) -> None:
    cols = torch.zeros(8, dtype=torch.bool)
    cols[[0, 5, 6]] = True
    mask = mar_mask(x, 0.2, always_observed=cols, seed=0)
    assert mask[:, cols].all()
    assert not mask[:, ~cols].all(dim=0).any()  # every other column has some missing entries


def test_mar_missingness_depends_on_observed_columns(x: torch.Tensor) -> None:
    obs = [0, 1]
    mask = mar_mask(x, 0.3, always_observed=obs, seed=21)
    missing = ~mask
    dep = [abs(corr(x[:, i], missing[:, j])) for i in obs for j in range(2, 8)]
    # under independence each correlation is ~N(0, 1/N): sd 0.007, so 0.1 is > 14 sd away
    assert max(dep) > 0.1
    # at least half of the missing columns depend clearly on one of the observed ones
    per_col = [max(abs(corr(x[:, i], missing[:, j])) for i in obs) for j in range(2, 8)]
    assert sum(c > 0.05 for c in per_col) >= 3

    # contrast: an MCAR mask shows no such dependence
    mcar = ~mcar_mask(tuple(x.shape), 0.3, seed=21)
    null = [abs(corr(x[:, i], mcar[:, j])) for i in obs for j in range(2, 8)]
    assert max(null) < Z / math.sqrt(N)


def test_mar_missingness_ignores_own_value_given_independent_columns(x: torch.Tensor) -> None:
    # the columns of x are independent, so under MAR a column's missingness is independent of
    # its own (possibly missing) value
    mask = mar_mask(x, 0.3, always_observed=[0, 1], seed=21)
    own = [abs(corr(x[:, j], ~mask[:, j])) for j in range(2, 8)]
    assert max(own) < Z / math.sqrt(N)


# ----------------------------------------------------------------------------------------------
# MNAR structure
# ----------------------------------------------------------------------------------------------


def _top_bottom_rates(data: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    median = data.median(dim=0).values
    top = data > median
    missing = (~mask).double()
    top_rate = (missing * top).sum(0) / top.sum(0)
    bottom_rate = (missing * ~top).sum(0) / (~top).sum(0)
    return top_rate, bottom_rate


def test_mnar_larger_values_more_likely_missing(x: torch.Tensor) -> None:
    mask = mnar_mask(x, 0.3, strength=2.0, seed=3)
    top, bottom = _top_bottom_rates(x, mask)
    # sigmoid(2 z + c) differs a lot between the halves; the SE of each half-rate is < 0.005
    assert torch.all(top - bottom > 0.2)
    # and within each half the missingness still depends on the value: compare top quartiles
    q75 = x.quantile(0.75, dim=0)
    q50 = x.median(dim=0).values
    upper = x > q75
    mid = (x > q50) & ~upper
    missing = (~mask).double()
    assert torch.all((missing * upper).sum(0) / upper.sum(0) > (missing * mid).sum(0) / mid.sum(0))


def test_mnar_strength_controls_direction_and_size(x: torch.Tensor) -> None:
    tol = 2 * binomial_tol(0.5, N // 2)  # difference of two half-sample rates
    top0, bottom0 = _top_bottom_rates(x, mnar_mask(x, 0.3, strength=0.0, seed=3))
    assert torch.all((top0 - bottom0).abs() < tol)  # strength 0 is MCAR
    top_neg, bottom_neg = _top_bottom_rates(x, mnar_mask(x, 0.3, strength=-2.0, seed=3))
    assert torch.all(bottom_neg - top_neg > 0.2)  # negative strength reverses the direction
    top_big, bottom_big = _top_bottom_rates(x, mnar_mask(x, 0.5, strength=50.0, seed=3))
    assert torch.all(top_big > 0.97) and torch.all(bottom_big < 0.03)  # almost a threshold


# ----------------------------------------------------------------------------------------------
# dtype and device
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64, torch.int64])
def test_masks_follow_device_and_accept_dtypes(dtype: torch.dtype) -> None:
    data = (torch.randn(400, 4, generator=torch.Generator().manual_seed(0)) * 5).to(dtype)
    for mask in (mar_mask(data, 0.2, seed=0), mnar_mask(data, 0.2, seed=0)):
        assert mask.dtype == torch.bool
        assert mask.device == data.device
        assert mask.shape == data.shape
        assert 0 < missing_rate(mask) < 0.5


def test_mcar_device_argument() -> None:
    mask = mcar_mask([3, 4], 0.5, seed=0, device="cpu")
    assert mask.device == torch.device("cpu") and mask.shape == (3, 4)
    assert mcar_mask(5, 0.5, seed=0).shape == (5,)


# ----------------------------------------------------------------------------------------------
# apply_mask and missing_rate
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_apply_mask_puts_nan_exactly_where_missing(dtype: torch.dtype) -> None:
    data = torch.randn(500, 5, generator=torch.Generator().manual_seed(0)).to(dtype)
    before = data.clone()
    mask = mcar_mask(tuple(data.shape), 0.4, seed=1)
    out = apply_mask(data, mask)
    assert out.dtype == dtype and out.shape == data.shape
    assert torch.equal(torch.isnan(out), ~mask)
    assert torch.equal(out[mask], data[mask])
    assert torch.equal(data, before)  # input untouched
    assert out.data_ptr() != data.data_ptr()
    out[0, 0] = 123.0
    assert data[0, 0] != 123.0  # a real copy


def test_missing_rate_counts_false_entries() -> None:
    mask = torch.tensor([[True, False], [False, False]])
    assert missing_rate(mask) == 0.75
    assert missing_rate(torch.ones(3, 3, dtype=torch.bool)) == 0.0
    assert missing_rate(torch.zeros(2, 5, dtype=torch.bool)) == 1.0


# ----------------------------------------------------------------------------------------------
# input validation
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SIMULATORS))
@pytest.mark.parametrize(
    "rate, error",
    [(r, ValueError) for r in (-0.1, 1.0, 1.5, float("nan"))]
    + [(r, TypeError) for r in ("0.3", None, True, torch.tensor([0.1, 0.2]))],
)
def test_bad_missing_rate(x: torch.Tensor, name: str, rate: object, error: type) -> None:
    data = x[:50]
    call = {
        "mcar": lambda: mcar_mask((50, 8), rate),
        "mar": lambda: mar_mask(data, rate),
        "mnar": lambda: mnar_mask(data, rate),
    }[name]
    with pytest.raises(error, match="missing_rate"):
        call()


@pytest.mark.parametrize("fn", [mar_mask, mnar_mask])
@pytest.mark.parametrize("shape", [(10,), (2, 3, 4), ()])
def test_x_must_be_2d(fn, shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="x must be 2-D"):
        fn(torch.randn(shape), 0.2)


@pytest.mark.parametrize("fn", [mar_mask, mnar_mask])
def test_x_must_be_tensor(fn) -> None:
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        fn([[1.0, 2.0], [3.0, 4.0]], 0.2)


@pytest.mark.parametrize("fn", [mar_mask, mnar_mask])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_x_must_be_finite(fn, bad: float) -> None:
    data = torch.randn(20, 4)
    data[3, 2] = bad
    with pytest.raises(ValueError, match="x contains"):
        fn(data, 0.2)


def test_mar_rate_too_high_for_remaining_columns() -> None:
    data = torch.randn(50, 4)  # k = 1: remaining columns need 0.8 * 4 / 3 > 1
    with pytest.raises(ValueError, match="missing_rate"):
        mar_mask(data, 0.8)
    with pytest.raises(ValueError, match="missing_rate"):
        mar_mask(data, 0.3, always_observed=[0, 1, 2])  # 0.3 * 4 / 1 > 1
    with pytest.raises(ValueError, match="always observed"):
        mar_mask(data, 0.1, always_observed=[0, 1, 2, 3])
    mar_mask(data, 0.0, always_observed=[0, 1, 2, 3])  # rate 0 is fine


@pytest.mark.parametrize(
    ("always_observed", "error"),
    [
        ([4], ValueError),
        ([-5], ValueError),
        ([], ValueError),
        ([False] * 4, ValueError),
        ([True, False], ValueError),
        ([[0, 1]], ValueError),
        ([0.5, 1.5], TypeError),
        ("01", TypeError),
    ],
)
def test_bad_always_observed(always_observed: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="always_observed"):
        mar_mask(torch.randn(30, 4), 0.1, always_observed=always_observed)


@pytest.mark.parametrize("strength", [float("inf"), float("nan")])
def test_mnar_bad_strength_value(strength: float) -> None:
    with pytest.raises(ValueError, match="strength"):
        mnar_mask(torch.randn(30, 3), 0.1, strength=strength)


@pytest.mark.parametrize("strength", ["2", None, True])
def test_mnar_bad_strength_type(strength: object) -> None:
    with pytest.raises(TypeError, match="strength"):
        mnar_mask(torch.randn(30, 3), 0.1, strength=strength)


@pytest.mark.parametrize("seed", [1.5, "3", True])
def test_bad_seed_type(seed: object) -> None:
    with pytest.raises(TypeError, match="seed"):
        mcar_mask((4, 4), 0.1, seed=seed)
    with pytest.raises(TypeError, match="seed"):
        mar_mask(torch.randn(10, 4), 0.1, seed=seed)
    with pytest.raises(TypeError, match="seed"):
        mnar_mask(torch.randn(10, 4), 0.1, seed=seed)


def test_bad_generator_type() -> None:
    with pytest.raises(TypeError, match="generator"):
        mnar_mask(torch.randn(10, 4), 0.1, generator=123)


@pytest.mark.parametrize(("shape", "error"), [((3, -1), ValueError), ((2.0, 3), TypeError)])
def test_mcar_bad_shape(shape: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="shape"):
        mcar_mask(shape, 0.1)


def test_apply_mask_validation() -> None:
    data = torch.randn(4, 3)
    with pytest.raises(ValueError, match="shape"):
        apply_mask(data, torch.ones(3, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="mask must be a boolean"):
        apply_mask(data, torch.ones(4, 3))
    with pytest.raises(TypeError, match="mask must be a torch.Tensor"):
        apply_mask(data, [[True] * 3] * 4)
    with pytest.raises(TypeError, match="x must have a floating dtype"):
        apply_mask(torch.ones(4, 3, dtype=torch.int64), torch.ones(4, 3, dtype=torch.bool))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        apply_mask([[1.0] * 3] * 4, torch.ones(4, 3, dtype=torch.bool))


def test_missing_rate_validation() -> None:
    with pytest.raises(TypeError, match="mask must be a boolean"):
        missing_rate(torch.ones(3, 3, dtype=torch.int64))
    with pytest.raises(TypeError, match="mask must be a torch.Tensor"):
        missing_rate([[True, False]])
    with pytest.raises(ValueError, match="mask is empty"):
        missing_rate(torch.ones(0, 3, dtype=torch.bool))


def test_masked_table_mixin():
    from dataclasses import dataclass

    from pyro_msm.missingness import MaskedTable

    @dataclass
    class Problem(MaskedTable):
        x: torch.Tensor
        mask: torch.Tensor

    x = torch.arange(6.0).reshape(3, 2)
    mask = torch.tensor([[True, False], [True, True], [False, True]])
    p = Problem(x, mask)
    assert (p.n, p.d) == (3, 2)
    assert p.realised_missing_rate == pytest.approx(2 / 6)
    assert torch.equal(torch.isnan(p.observed), ~mask)
    assert torch.equal(p.observed[mask], x[mask])
