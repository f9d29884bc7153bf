r"""A scikit-learn imputer fitted by marginal score matching: :class:`ScoreMatchingImputer`.

The default model is a Gaussian :math:`N(\mu, P^{-1})` on the standardised table. Its exact
marginal score-matching loss (:func:`~pyro_msm.infer.gaussian.marginal_score_matching_loss`)
is minimised full-batch by L-BFGS over :math:`\mu` and a Cholesky factor :math:`P = L L^\top`
(positive log-diagonal), with a ridge penalty :math:`\lambda \lVert P - D \rVert_F^2` towards
:math:`D`, the diagonal model's precision (each column's inverse variance). As
:math:`\lambda \to \infty` the precision becomes :math:`D` and the conditional mean of a missing
entry is its column mean, so the penalty interpolates between the score-matching fit and mean
imputation (a penalty on the off-diagonal entries alone let the diagonal grow on collinear
columns and gave conditional means far worse than the column mean). ``shrinkage="auto"`` picks
:math:`\lambda` by ``cv``-fold cross-validation over rows: each fold's rows are left out of the
fit, and *every* observed entry of a held-out row is predicted from the row's other observed
entries (a closed form, one factorisation per row), so the held-out error averages over all
observed entries rather than one per row; its standard errors treat rows as independent
clusters. The penalty kept is the largest whose held-out squared error is within one standard
error (of the paired difference) of the best one's: the one-standard-error rule of [3]. The
grid includes the diagonal model (mean imputation), and departing from it is tested: a finite
penalty is considered only if the best standardised gain of one over the diagonal model exceeds
the one-sided quantile at level ``alpha`` (0.05), Bonferroni corrected over the finite
penalties compared, of Student's t with one degree of freedom fewer than the held-out rows (the
normal quantile for large tables; strict when few rows make the standard error itself
uncertain). The standard error of that test is widened by Nadeau and Bengio's correction [4]
for the training rows that the folds share (a factor :math:`\sqrt{1 + K n_2 / n_1}`, 1.5 for 5
folds; the false-departure rates and the power with and without it: ``benchmarks/imputer.py
--selection-simulation``). (The one-standard-error rule alone departs from the diagonal model
whenever a penalty beats it by one standard error: under no structure at all, with probability
about :math:`P(Z > 1) = 0.16` per penalty.) The fits saw a :math:`(\mathrm{cv}-1)/\mathrm{cv}`
share of the rows; as a ridge penalty on a mean loss scales with :math:`1/n` (the data term's
noise does), the whole table is fitted at the chosen penalty times the mean training share.
Gaps are then filled with the conditional mean
(:func:`~pyro_msm.infer.gaussian.conditional_gaussian`) or a draw from the conditional
(:func:`~pyro_msm.infer.gaussian.sample_conditional_gaussian`); intervals are exact Gaussian
quantiles.

Any energy is possible: ``energy`` may be a factory ``d -> torch.nn.Module`` (a network mapping
``(..., d)`` rows to energies, e.g. :class:`~pyro_msm.distributions.EnergyMLP`); it is trained
by SVI-free Adam steps on :class:`~pyro_msm.infer.MissingScoreMatching` (importance weighting)
and imputes by importance resampling (:func:`~pyro_msm.impute` with ``method="iw"``).

The loss is evaluated per *missingness pattern*: rows sharing an observed set share
:math:`Q = (\Sigma_{oo})^{-1}`, and the per-row quadratic terms sum to
:math:`\mathrm{tr}(Q R Q)` with :math:`R` the pattern's centred Gram matrix, so one L-BFGS
iteration costs one small factorisation per pattern, not per row; it equals the row sum of
:func:`~pyro_msm.infer.gaussian.marginal_score_matching_loss` (tested).

References

[1] Givens, Liu & Reeve, "Score Matching with Missing Data", ICML 2025, arXiv:2506.00557.

[2] Hyvarinen, "Estimation of Non-Normalized Statistical Models by Score Matching", JMLR 6, 2005.

[3] Hastie, Tibshirani & Friedman, "The Elements of Statistical Learning", 2nd ed., 2009,
section 7.10 (the one-standard-error rule).

[4] Nadeau & Bengio, "Inference for the Generalization Error", Machine Learning 52, 2003
(the corrected resampled t-test).

The computation follows the ``device`` and ``dtype`` options (default float64 on the CPU, as
scikit-learn expects): the standardised table moves to the device once, and the fits, the
penalty search and the imputations run there; NumPy arrays come back in float64.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from statistics import NormalDist
from typing import Any

import numpy as np
import torch
from scipy.stats import t as student_t
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import Tensor

from .infer.gaussian import (
    PatternStatistics,
    conditional_gaussian,
    grouped_marginal_loss,
    pairwise_moments,
    pattern_statistics,
    restrict,
    sample_conditional_gaussian,
)
from .persistence import SaveLoadMixin
from .tables import Standardizer, as_table, is_dataframe

__all__ = ["ScoreMatchingImputer", "gaussian_pattern_loss", "fit_gaussian_marginal"]

#: Default penalty grid of ``shrinkage="auto"`` (``math.inf`` is the diagonal precision, i.e.
#: mean imputation; the grid runs from there down to light shrinkage).
SHRINKAGE_GRID = (math.inf, 3.0, 1.0, 0.3, 0.1, 0.03, 0.01, 0.003)

#: ``shrinkage="auto"`` stops descending the grid once the held-out error of the first fold has
#: risen at this many penalties in a row (the skipped, smaller penalties overfit and are slow).
PATH_PATIENCE = 2

#: Tolerance on the change of the objective for the validation fits of ``shrinkage="auto"``
#: (the final fit uses ``fit_gaussian_marginal``'s default, 1e-8): against 1e-5, the held-out
#: RMSEs of the penalties near the best move by < 5e-4 (their paired standard errors are
#: >= 1e-3) and the fits take 25-35% fewer loss evaluations; only the overfitted smallest
#: penalties move more (by up to 1.2%), far from the chosen one.
VALIDATION_TOL = 1e-4

#: After the first fold of ``shrinkage="auto"``, a finite penalty whose held-out squared error
#: on that fold exceeds the fold's best by more than this many (row-clustered, paired) standard
#: errors is not fitted on the other folds: with the noise of the pooled estimate about
#: ``1 / sqrt(cv)`` of that fold's, it could neither become the best nor come within one
#: standard error of it.
PRUNE_Z = 4.0

_DTYPES = {"float64": torch.float64, "float32": torch.float32}


# -- the Gaussian engine -----------------------------------------------------------------------


def _pattern_stats(x: Tensor, mask: Tensor) -> PatternStatistics:
    """Per-pattern sufficient statistics (:func:`~pyro_msm.infer.gaussian.pattern_statistics`)
    of the rows with an observed entry (the others carry no information)."""
    keep = mask.any(-1)
    return pattern_statistics(x[keep], mask[keep])


def gaussian_pattern_loss(
    x: Tensor, mask: Tensor, loc: Tensor, precision: Tensor, *, stats: Any = None
) -> Tensor:
    r"""The summed exact marginal score-matching loss of a Gaussian model, by pattern.

    Equal to ``marginal_score_matching_loss(x, mask, loc, precision).sum()`` over rows with an
    observed entry, computed as
    :math:`\sum_k [-2 n_k \mathrm{tr}\,Q_k + \mathrm{tr}(Q_k R_k Q_k)]` with
    :math:`Q_k = (\Sigma_{o_k o_k})^{-1}` and :math:`R_k` the centred Gram matrix of the pattern's
    rows, so its cost grows with the number of distinct patterns, not rows.

    :param x: ``(n, d)`` (missing entries arbitrary but finite); :param mask: boolean ``(n, d)``;
    :param loc: ``(d,)``; :param precision: ``(d, d)``;
    :param stats: precomputed statistics of ``(x, mask)`` (internal; speeds up repeated calls).
    :returns: a scalar.
    """
    s = _pattern_stats(x, mask) if stats is None else stats
    # one implementation of the grouped loss: infer.gaussian's, which averages over the rows
    return grouped_marginal_loss(s, loc, precision) * s.num_rows


def _leave_one_out_errors(z: Tensor, mask: Tensor, loc: Tensor, precision: Tensor) -> Tensor:
    r"""Each observed entry minus its conditional mean given the other observed entries of its
    row under :math:`N(\mu, P^{-1})`; zero where missing.

    With :math:`K = (\Sigma_{oo})^{-1}` on the row's observed set, the error of entry
    :math:`j` is :math:`(K (x_o - \mu_o))_j / K_{jj}` (the conditional of :math:`x_j` given
    :math:`x_{o \setminus j}` has precision :math:`K_{jj}`), so one factorisation per row gives
    all of them. A row with one observed entry gets its deviation from the mean.

    :param z: ``(n, d)``; :param mask: boolean ``(n, d)``; :param loc: ``(d,)``;
    :param precision: ``(d, d)``.
    :returns: ``(n, d)``.
    """
    covariance = torch.cholesky_inverse(torch.linalg.cholesky(precision))
    chol = torch.linalg.cholesky(restrict(covariance, mask))  # Sigma_oo, identity elsewhere
    centred = torch.where(mask, z - loc, torch.zeros((), dtype=z.dtype, device=z.device))
    solved = torch.cholesky_solve(centred.unsqueeze(-1), chol).squeeze(-1)  # K (x_o - mu_o)
    diagonal = torch.diagonal(torch.cholesky_inverse(chol), dim1=-2, dim2=-1)
    return torch.where(mask, solved / diagonal, torch.zeros_like(solved))


def _clustered_se(differences: Tensor, counts: Tensor) -> float:
    r"""Standard error of :math:`\sum_i D_i / \sum_i N_i` (a mean over entries whose errors
    are correlated within rows) with rows as independent clusters: the ratio estimator's
    :math:`\sqrt{n/(n-1) \sum_i (D_i - \bar m N_i)^2} / \sum_i N_i`.

    :param differences: ``(n,)`` per-row sums :math:`D_i`; :param counts: ``(n,)`` entries
        :math:`N_i` per row.
    """
    rows = differences.numel()
    if rows < 2:
        return float(differences.abs().sum())
    total = counts.sum()
    mean = differences.sum() / total
    spread = ((differences - mean * counts) ** 2).sum() * rows / (rows - 1)
    return float(spread.sqrt() / total)


def _standardised_gain(differences: Tensor, counts: Tensor) -> float:
    """``sum(differences) / sum(counts)`` in units of its row-clustered standard error
    (:func:`_clustered_se`); +-inf where that is zero and the gain is not."""
    gain = float(differences.sum()) / float(counts.sum())
    se = _clustered_se(differences, counts)
    if se > 0:
        return gain / se
    return math.copysign(math.inf, gain) if gain != 0 else 0.0


def _resampling_variance_factor(held: Sequence[int], trained: Sequence[int]) -> float:
    r"""Nadeau and Bengio's correction [4] of the variance of a ``K``-fold estimate: the
    row-clustered variance (:func:`_clustered_se` squared) treats the held-out rows as the only
    noise, but the ``K`` fits share most of their training rows, so their errors are correlated
    through the training sample too. The corrected variance of the mean over ``J`` splits is
    :math:`(1/J + n_2/n_1)\,\sigma^2` against the naive :math:`\sigma^2 / J` (``sigma^2`` the
    variance of one split's estimate, ``n_1``, ``n_2`` its training and held-out rows), a
    factor :math:`1 + J n_2 / n_1` (2.25 for 5 folds: standard errors 1.5 times wider).

    :param held: held-out rows of each fold; :param trained: training rows of each fold.
    :returns: the factor (1 with no folds).
    """
    if not held or not trained:
        return 1.0
    return 1.0 + len(held) * float(np.mean(held)) / max(float(np.mean(trained)), 1.0)


def _precision_from(raw: Tensor, d: int) -> Tensor:
    tril = torch.zeros(d, d, dtype=raw.dtype, device=raw.device)
    rows, cols = torch.tril_indices(d, d, device=raw.device)
    tril = tril.index_put((rows, cols), raw)
    diag = torch.diagonal(tril)
    tril = tril - torch.diag_embed(diag) + torch.diag_embed(torch.exp(diag))
    return tril @ tril.T


def _raw_from(precision: Tensor) -> Tensor:
    d = precision.shape[-1]
    tril = torch.linalg.cholesky(precision)
    tril = tril - torch.diag_embed(torch.diagonal(tril)) + torch.diag_embed(
        torch.log(torch.diagonal(tril))
    )
    rows, cols = torch.tril_indices(d, d, device=precision.device)
    return tril[rows, cols]


def _diagonal_fit(stats: PatternStatistics, d: int, dtype, device) -> tuple[Tensor, Tensor]:
    """The infinite-penalty solution: per column, the observed mean and 1 / variance."""
    counts = (stats.patterns.to(dtype) * stats.counts[:, None]).sum(0)
    sums = stats.sums.sum(0)
    squares = torch.diagonal(stats.scatter, dim1=-2, dim2=-1).sum(0)
    loc = torch.where(counts > 0, sums / counts.clamp(min=1), torch.zeros_like(sums))
    var = squares / counts.clamp(min=1) - loc**2
    var = torch.where((counts > 1) & (var > 1e-12), var, torch.ones_like(var))
    return loc, torch.diag(1.0 / var)


def fit_gaussian_marginal(
    x: Tensor,
    mask: Tensor,
    shrinkage: float,
    *,
    init: tuple[Tensor, Tensor] | None = None,
    max_iter: int = 100,
    tol: float = 1e-8,
    stats: Any = None,
    info: dict[str, Any] | None = None,
) -> tuple[Tensor, Tensor]:
    r"""Minimise the mean exact marginal score-matching loss of :math:`N(\mu, P^{-1})` plus
    ``shrinkage`` :math:`\times \lVert P - D \rVert_F^2` (``D`` the diagonal model's
    precision), full batch, by L-BFGS (strong Wolfe
    line search) over :math:`\mu` and the Cholesky factor of :math:`P`.

    :param x: ``(n, d)``, missing entries arbitrary but finite; :param mask: boolean ``(n, d)``.
    :param shrinkage: :math:`\lambda \ge 0`; ``math.inf`` gives the diagonal closed form.
    :param init: starting ``(loc, precision)`` (default: pairwise moments, inverted).
    :param max_iter: L-BFGS iterations.
    :param tol: tolerance on the change of the objective.
    :param stats: precomputed pattern statistics (internal).
    :param info: a dict that receives ``"iterations"`` (L-BFGS iterations run).
    :returns: ``(loc, precision)``.
    :raises FloatingPointError: when the objective is unbounded on this table at this penalty.
    """
    d = x.shape[1]
    stats = _pattern_stats(x, mask) if stats is None else stats
    if math.isinf(shrinkage):
        if info is not None:
            info["iterations"] = 0
        return _diagonal_fit(stats, d, x.dtype, x.device)
    if init is None:
        loc0, cov0 = pairwise_moments(x, mask)
        init = (loc0, torch.cholesky_inverse(torch.linalg.cholesky(cov0)))
    loc = init[0].detach().to(x).clone().requires_grad_(True)
    raw = _raw_from(init[1].detach().to(x)).requires_grad_(True)
    target = _diagonal_fit(stats, d, x.dtype, x.device)[1]
    scale = 1.0 / max(stats.num_rows, 1)
    # tolerances the dtype can resolve (float32 cannot see a change of 1e-8 in a loss of ~10)
    eps = torch.finfo(x.dtype).eps
    optimizer = torch.optim.LBFGS(
        [loc, raw],
        max_iter=int(max_iter),
        tolerance_change=max(float(tol), 8 * eps),
        tolerance_grad=max(1e-10, 100 * eps),
        history_size=20,
        line_search_fn="strong_wolfe",
    )
    # non-finite objective values are recorded on the device and checked once after the run
    # (no host read per evaluation; L-BFGS's own line search reads the scalar loss anyway)
    finite = torch.ones((), dtype=torch.bool, device=x.device)

    def closure() -> Tensor:
        nonlocal finite
        optimizer.zero_grad()
        precision = _precision_from(raw, d)
        value = scale * gaussian_pattern_loss(x, mask, loc, precision, stats=stats)
        value = value + shrinkage * ((precision - target) ** 2).sum()
        finite = finite & torch.isfinite(value)
        value.backward()
        return value

    try:
        optimizer.step(closure)
        if info is not None:
            info["iterations"] = int(optimizer.state[loc].get("n_iter", 0))
    except torch.linalg.LinAlgError as err:
        raise FloatingPointError(f"the fit at shrinkage {shrinkage:g} failed: {err}") from err
    precision = _precision_from(raw.detach(), d)
    if not bool(finite) or not bool(torch.isfinite(precision).all()):
        raise FloatingPointError(
            f"the fit at shrinkage {shrinkage:g} diverged (the objective is unbounded or not "
            "finite on this table at this penalty)"
        )
    return loc.detach(), precision


# -- the estimator -----------------------------------------------------------------------------


def _devices(t: Tensor) -> list:
    """Devices whose random state :func:`torch.random.fork_rng` must fork for ``t``."""
    return [t.device] if t.device.type == "cuda" else []


def _energy_factory(energy: Any) -> Callable[[int], torch.nn.Module] | None:
    if energy is None or (isinstance(energy, str) and energy == "gaussian"):
        return None
    if isinstance(energy, str) and energy == "mlp":
        from .distributions import EnergyMLP

        return lambda d: EnergyMLP(d, (32, 32))
    if callable(energy):
        return energy
    raise ValueError(
        f"energy must be 'gaussian', 'mlp' or a callable d -> torch.nn.Module, got {energy!r}"
    )


class ScoreMatchingImputer(SaveLoadMixin, TransformerMixin, BaseEstimator):
    r"""Fill missing entries with a model fitted by marginal score matching (scikit-learn API).

    ``fit`` standardises each column on its observed entries, fits the model to the incomplete
    table (module documentation), and ``transform`` fills every NaN with the conditional mean
    given the row's observed entries (or, with ``sample_posterior=True``, one draw from the
    conditional), in the original units; observed entries are returned unchanged. Works with
    ``Pipeline``, ``clone``, ``set_output(transform="pandas")``, pickling and
    :meth:`~pyro_msm.persistence.SaveLoadMixin.save` / ``load``. DataFrames are accepted (NaN,
    None, ``pd.NA`` = missing; text columns refused by name).

    For multiple imputation (as with ``IterativeImputer(sample_posterior=True)`` and several
    seeds), :meth:`multiple_imputations` returns ``n_imputations`` completed tables drawn from
    the fitted conditional; :meth:`interval` gives equal-tailed intervals per entry.

    :param energy: ``"gaussian"`` (default; fast exact fit), ``"mlp"`` (an
        :class:`~pyro_msm.distributions.EnergyMLP`), or a factory ``d -> torch.nn.Module``
        mapping ``(..., d)`` rows to energies.
    :param shrinkage: ridge :math:`\lambda` pulling the Gaussian precision (in standardised
        units) towards the diagonal model's, ``"auto"`` (chosen on held-out observed entries from
        ``shrinkage_grid``) or ``math.inf`` (diagonal: mean imputation with calibrated
        intervals).
    :param shrinkage_grid: candidates for ``"auto"`` (default :data:`SHRINKAGE_GRID`).
    :param cv: folds of the penalty choice: the rows with two or more observed entries are
        split at random into ``cv`` folds; in turn, each fold's rows are left out, the model is
        fitted along the grid to the other rows, and each observed entry of the left-out rows
        is predicted by its conditional mean given the rest of its row (every eligible row is
        held out once; with fewer eligible rows than ``cv``, each row is its own fold). The
        grid is descended from the largest penalty, each fit starting from
        the previous one, at the validation tolerance :data:`VALIDATION_TOL`; once the first
        fold's held-out error has risen at :data:`PATH_PATIENCE` penalties in a row, the
        smaller ones are skipped, and penalties that fold rules out by more than
        :data:`PRUNE_Z` standard errors are not fitted on the others.
    :param selection: ``"one_se"`` (default): the largest penalty whose held-out squared error
        exceeds the best penalty's by at most one standard error of the paired difference
        (the same entries under both penalties, so the noise they share cancels; rows as
        clusters); ``"best"``: the penalty with the smallest held-out error. Because the grid
        includes ``math.inf`` (mean imputation), ``"one_se"`` first tests it (``alpha``) and
        keeps mean imputation unless a penalty beats it significantly.
    :param alpha: level of that test (one-sided, Bonferroni over the finite penalties fitted on
        every fold): the diagonal model is left only if some penalty's held-out gain over it
        exceeds the :math:`1 - \alpha / m` quantile of Student's t (rows - 1 degrees of
        freedom; about :math:`\Phi^{-1}(1 - \alpha / m)`) in standard errors, widened for
        the folds' shared training rows (:func:`_resampling_variance_factor`); ``None``: no
        test (the
        plain one-standard-error rule over the whole grid).
    :param sample_posterior: fill gaps with a draw from the conditional instead of its mean.
    :param n_imputations: completed tables returned by :meth:`multiple_imputations`.
    :param max_iter: L-BFGS iterations (Gaussian) or Adam steps (other energies).
    :param lr: Adam learning rate for non-Gaussian energies.
    :param num_particles: importance draws per row: ``num_particles`` while training a
        non-Gaussian energy, 100 times as many when imputing with it.
    :param random_state: seed (int), :class:`numpy.random.RandomState` or None.
    :param verbose: print the chosen penalty and timing.
    :param device: torch device of the fit and the imputations (``None``: CPU). Input and
        output stay NumPy/pandas; the table moves to the device once per call.
    :param dtype: ``"float64"`` (default, scikit-learn's precision) or ``"float32"`` (a
        ``torch.dtype`` is also accepted); standardisation and the returned values are
        computed in float64 whatever this is.

    Attributes after ``fit``: ``location_`` ``(d,)`` and ``precision_`` ``(d, d)`` (standard
    units, Gaussian), ``energy_`` (the trained network otherwise), ``standardizer_``
    (:class:`~pyro_msm.tables.Standardizer`), ``shrinkage_`` (the penalty of the final fit),
    ``cv_shrinkage_`` (for ``"auto"``: the grid penalty chosen on the folds, of which
    ``shrinkage_`` is the scaled value; None for a fixed penalty), ``validation_rmse_`` (dict
    penalty -> RMSE in standard units on the held-out entries, NaN where not fitted, for
    ``"auto"``), ``validation_se_`` (dict penalty -> standard error of its mean squared error
    minus the best penalty's, paired over the held-out entries), ``validation_z_`` (the test
    statistic: the largest standardised gain of a finite penalty over the diagonal model, in
    the widened standard errors; NaN when not tested), ``validation_threshold_`` (the t
    quantile it had to exceed; NaN when not tested), ``n_iter_`` (L-BFGS
    iterations of the final fit, or Adam steps),
    ``n_features_in_`` and ``feature_names_in_`` (for DataFrames).
    """

    def __init__(
        self,
        energy: Any = "gaussian",
        *,
        shrinkage: float | str = "auto",
        shrinkage_grid: Sequence[float] | None = None,
        cv: int = 5,
        selection: str = "one_se",
        alpha: float | None = 0.05,
        sample_posterior: bool = False,
        n_imputations: int = 5,
        max_iter: int = 100,
        lr: float = 0.01,
        num_particles: int = 10,
        random_state: int | np.random.RandomState | None = None,
        verbose: bool = False,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype = "float64",
    ) -> None:
        self.energy = energy
        self.shrinkage = shrinkage
        self.shrinkage_grid = shrinkage_grid
        self.cv = cv
        self.selection = selection
        self.alpha = alpha
        self.sample_posterior = sample_posterior
        self.n_imputations = n_imputations
        self.max_iter = max_iter
        self.lr = lr
        self.num_particles = num_particles
        self.random_state = random_state
        self.verbose = verbose
        self.device = device
        self.dtype = dtype

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        return tags

    # -- input -------------------------------------------------------------------------------
    def _validate(self, X: Any, reset: bool) -> tuple[Tensor, Tensor]:
        if is_dataframe(X):
            as_table(X, name="X")  # refuses text columns by name before sklearn's checks
        array = validate_data(
            self,
            X,
            reset=reset,
            dtype=np.float64,
            ensure_all_finite="allow-nan",
            ensure_min_samples=2 if reset else 1,
        )
        x = torch.as_tensor(np.array(array, dtype=np.float64, copy=True))
        return x, ~torch.isnan(x)

    def _compute(self) -> tuple[torch.device, torch.dtype]:
        """The device and dtype the model computes in."""
        dtype = _DTYPES.get(self.dtype, self.dtype) if isinstance(self.dtype, str) else self.dtype
        if dtype not in (torch.float64, torch.float32):
            raise ValueError(f"dtype must be 'float64' or 'float32', got {self.dtype!r}")
        return torch.device("cpu" if self.device is None else self.device), dtype

    def _standardised(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """``(z, mask)`` on the compute device and dtype: standardised (in float64, on the
        host) with missing entries zero, moved once."""
        device, dtype = self._compute()
        z = torch.nan_to_num(self.standardizer_.transform(x))
        return z.to(device=device, dtype=dtype), mask.to(device)

    def _check_params(self) -> None:
        if not (isinstance(self.shrinkage, str) and self.shrinkage == "auto"):
            if not isinstance(self.shrinkage, (int, float)) or not self.shrinkage >= 0:
                raise ValueError(
                    f"shrinkage must be 'auto', a non-negative number or math.inf, got "
                    f"{self.shrinkage!r}"
                )
        if isinstance(self.cv, bool) or not isinstance(self.cv, (int, np.integer)) or self.cv < 2:
            raise ValueError(f"cv must be an integer of at least 2, got {self.cv!r}")
        if self.selection not in ("one_se", "best"):
            raise ValueError(f"selection must be 'one_se' or 'best', got {self.selection!r}")
        if self.alpha is not None and not (
            isinstance(self.alpha, (int, float)) and 0.0 < self.alpha < 1.0
        ):
            raise ValueError(f"alpha must be in (0, 1) or None, got {self.alpha!r}")
        self._compute()
        if int(self.n_imputations) < 1 or int(self.max_iter) < 1:
            raise ValueError("n_imputations and max_iter must be at least 1")
        _energy_factory(self.energy)

    # -- fitting -----------------------------------------------------------------------------
    def fit(self, X: Any, y: Any = None) -> ScoreMatchingImputer:
        """Fit the model to the incomplete table ``X`` (NaN = missing).

        :param X: ``(n, d)`` array or DataFrame.
        :param y: ignored.
        :returns: ``self``.
        :raises ValueError: for bad parameters, infinite values or fewer than 2 rows.
        :raises TypeError: for text columns (named).
        """
        self._check_params()
        x, mask = self._validate(X, reset=True)
        empty = ~mask.any(0)
        if bool(empty.any()):
            warnings.warn(
                f"ScoreMatchingImputer: {int(empty.sum())} column(s) have no observed value; "
                "they are imputed with 0",
                UserWarning,
                stacklevel=2,
            )
        self.standardizer_ = Standardizer.fit(x, mask)
        z, mask = self._standardised(x, mask)
        rng = check_random_state(self.random_state)
        self._seed = int(rng.randint(2**31 - 1))
        factory = _energy_factory(self.energy)
        self.validation_rmse_: dict[float, float] = {}
        self.validation_se_: dict[float, float] = {}
        self.validation_z_ = math.nan
        self.validation_threshold_ = math.nan
        if factory is None:
            self._fit_gaussian(z, mask, rng)
            self.energy_ = None
        else:
            self._fit_energy(z, mask, factory)
        return self

    def _fit_gaussian(self, z: Tensor, mask: Tensor, rng: np.random.RandomState) -> None:
        if isinstance(self.shrinkage, str):
            grid = sorted(
                (float(v) for v in (self.shrinkage_grid or SHRINKAGE_GRID)), reverse=True
            )
            shrinkage, init = self._select_shrinkage(z, mask, grid, rng)
        else:
            shrinkage, init = float(self.shrinkage), None
            self.cv_shrinkage_ = None
        if init is None and not math.isinf(shrinkage):
            # start from the diagonal fit: the inverse of a pairwise covariance can be badly
            # conditioned (collinear columns) and slows L-BFGS down by orders of magnitude
            init = fit_gaussian_marginal(z, mask, math.inf)
        stats = _pattern_stats(z, mask)
        info: dict[str, Any] = {}
        try:
            loc, precision = fit_gaussian_marginal(
                z, mask, shrinkage, init=init, max_iter=self.max_iter, stats=stats, info=info
            )
        except FloatingPointError as err:
            if math.isinf(shrinkage):
                raise
            warnings.warn(
                f"ScoreMatchingImputer: {err}; falling back to the diagonal model",
                UserWarning,
                stacklevel=3,
            )
            shrinkage = math.inf
            loc, precision = fit_gaussian_marginal(z, mask, shrinkage, stats=stats)
        self.shrinkage_ = shrinkage
        self.n_iter_ = int(info.get("iterations", 0))
        self.location_, self.precision_ = loc, precision

    def _select_shrinkage(
        self, z: Tensor, mask: Tensor, grid: list[float], rng: np.random.RandomState
    ) -> tuple[float, tuple[Tensor, Tensor] | None]:
        """``cv``-fold choice of the penalty by rows (class documentation): each fold's rows
        are left out of the fit, and each of their observed entries is predicted from the rest
        of its row (:func:`_leave_one_out_errors`); fits along the grid from the largest penalty
        down, each warm-started from the same fold's fit at the previous penalty (the first
        from the fold's diagonal fit), at the looser tolerance :data:`VALIDATION_TOL`; folds
        left empty (``cv`` above the eligible rows) are skipped; errors pooled per row over
        the folds; then the ``selection`` rule with row-clustered standard errors. Returns the
        penalty for the whole table (the chosen one scaled by the mean training share, as a
        ridge penalty on a mean loss scales with ``1 / n``) and a fit at it (a warm start)."""
        n, d = mask.shape
        device = z.device
        present = mask.any(-1)
        eligible = (mask.sum(-1) >= 2).cpu().numpy()
        folds = np.full(n, -1)
        rows = np.nonzero(eligible)[0]
        folds[rows] = rng.permutation(len(rows)) % int(self.cv)
        folds_t = torch.as_tensor(folds, device=device)
        # per penalty: per held-out row, the summed squared error and the number of entries
        errors: dict[float, list[Tensor] | None] = {value: [] for value in grid}
        counts: list[Tensor] = []
        fits: dict[float, list[tuple[Tensor, Tensor]]] = {value: [] for value in grid}
        trained: list[int] = []
        held_rows: list[int] = []
        path = list(grid)  # shortened by the first fold (below) for the others
        first = True
        for fold in range(int(self.cv)):
            held = folds_t == fold
            if int(held.sum()) < 1:
                continue
            train = present & ~held
            z_train, m_train = z[train], mask[train]
            stats = _pattern_stats(z_train, m_train)
            trained.append(stats.num_rows)
            held_rows.append(int(held.sum()))
            z_held, m_held = z[held], mask[held]
            counts.append(m_held.sum(-1).to(torch.float64))
            init = None
            if not math.isinf(path[0]):
                init = fit_gaussian_marginal(z_train, m_train, math.inf, stats=stats)
            previous, rises = math.inf, 0
            for index, value in enumerate(path):
                if errors[value] is None:
                    continue  # failed on an earlier fold: out of the running
                try:
                    loc, precision = fit_gaussian_marginal(
                        z_train, m_train, value, init=init, max_iter=self.max_iter,
                        tol=VALIDATION_TOL, stats=stats,
                    )  # fmt: skip
                except FloatingPointError:
                    errors[value] = None
                    current = math.inf
                else:
                    residual = _leave_one_out_errors(z_held, m_held, loc, precision)
                    squared = (residual.to(torch.float64) ** 2).sum(-1)
                    errors[value].append(squared)
                    fits[value].append((loc, precision))
                    init = (loc, precision)
                    current = float(squared.sum())
                # early stop of the path (first fold): the held-out error rose at
                # PATH_PATIENCE penalties in a row, so smaller ones (slow, overfitted) are skipped
                rises = rises + 1 if current > previous else 0
                previous = current
                if first and rises >= PATH_PATIENCE:
                    path = path[: index + 1]
                    break
            if first:
                path = self._prune(path, errors, counts[0])
            first = False
        for value in grid:
            if value not in path:
                errors[value] = None  # not fitted: the path stopped before it
        usable = {
            v: torch.cat(e) for v, e in errors.items() if e and len(e) == len(counts)
        }
        for value in grid:  # in grid order; NaN where failed or not fitted
            self.validation_rmse_[value] = math.nan
        if not usable or len(grid) == 1:
            value = grid[-1] if len(grid) == 1 else math.inf
            self.cv_shrinkage_ = value
            return value, None
        count = torch.cat(counts)
        total = float(count.sum())
        mse = {v: float(e.sum()) / total for v, e in usable.items()}
        best = min(mse, key=lambda v: mse[v])
        for value in grid:  # largest penalty first
            if value in usable:
                self.validation_rmse_[value] = math.sqrt(mse[value])
                self.validation_se_[value] = _clustered_se(usable[value] - usable[best], count)
        chosen_value = best
        if self.selection == "one_se":
            pool = list(usable)
            finite = [v for v in usable if not math.isinf(v)]
            if self.alpha is not None and math.inf in usable and finite:
                # the test of the diagonal model (mean imputation) against every finite penalty,
                # its standard errors widened for the folds' shared training rows
                diagonal = usable[math.inf]
                widen = math.sqrt(_resampling_variance_factor(held_rows, trained))
                self.validation_z_ = max(
                    _standardised_gain(diagonal - usable[v], count) for v in finite
                ) / widen
                # Student's t with (rows - 1) degrees of freedom: few rows, few clusters
                rows = int(count.numel())
                threshold = float(
                    student_t.ppf(1.0 - float(self.alpha) / len(finite), max(rows - 1, 1))
                )
                self.validation_threshold_ = threshold
                pool = finite if self.validation_z_ > threshold else [math.inf]
            low = min(pool, key=lambda v: mse[v])
            chosen_value = max(  # the one-standard-error rule within the pool
                v for v in pool
                if mse[v] - mse[low] <= _clustered_se(usable[v] - usable[low], count)
            )
        # the fits saw a (cv - 1) / cv share of the rows; the whole table's penalty is smaller
        share = float(np.mean(trained)) / max(int(present.sum()), 1)
        final = chosen_value * share
        self.cv_shrinkage_ = chosen_value
        if self.verbose:
            print(
                f"ScoreMatchingImputer: shrinkage {final:g} ({chosen_value:g} on the folds; "
                f"validation RMSE {self.validation_rmse_[chosen_value]:.4f}; best {best:g} "
                f"at {self.validation_rmse_[best]:.4f})"
            )
        warm = fits[chosen_value][-1] if fits[chosen_value] else None
        return final, warm

    @staticmethod
    def _prune(path: list[float], errors: dict, count: Tensor) -> list[float]:
        """The path without the finite penalties that the first fold already rules out
        (:data:`PRUNE_Z`)."""
        first = {v: e[0] for v, e in errors.items() if e}
        if len(first) < 2:
            return path
        best = min(first, key=lambda v: float(first[v].sum()))
        total = float(count.sum())
        keep = []
        for value in path:
            if value in first and not math.isinf(value) and value != best:
                excess = float((first[value] - first[best]).sum()) / total
                if excess > PRUNE_Z * _clustered_se(first[value] - first[best], count):
                    continue
            keep.append(value)
        return keep

    def _model(self, d: int):
        import pyro

        from . import observe
        from .distributions import FunctionEnergy

        net = self.energy_

        def model(table: Tensor) -> None:
            with pyro.plate("rows", table.shape[0]):
                observe("x", FunctionEnergy(net, d), obs=table)

        return model

    def _fit_energy(self, z: Tensor, mask: Tensor, factory: Callable) -> None:
        from .infer import MissingScoreMatching

        d = z.shape[1]
        with torch.random.fork_rng(devices=_devices(z)):
            torch.manual_seed(self._seed)
            net = factory(d)
            if not isinstance(net, torch.nn.Module):
                raise TypeError(
                    f"energy factory must return a torch.nn.Module, got {type(net).__name__}"
                )
            self.energy_ = net.to(device=z.device, dtype=z.dtype)
            table = torch.where(mask, z, torch.full((), math.nan, dtype=z.dtype, device=z.device))
            table = table[mask.any(-1)]
            model = self._model(d)
            loss = MissingScoreMatching("iw", num_particles=int(self.num_particles))(model, None)
            optimizer = torch.optim.Adam(net.parameters(), lr=float(self.lr))
            for _ in range(int(self.max_iter)):
                optimizer.zero_grad()
                value = loss(table)
                value.backward()
                optimizer.step()
        self.shrinkage_ = None
        self.n_iter_ = int(self.max_iter)

    # -- imputing ----------------------------------------------------------------------------
    def _conditional(self, X: Any) -> tuple[Tensor, Tensor, Tensor | None, Tensor]:
        """Standardised table, mask, Cholesky factors (Gaussian) and conditional means."""
        check_is_fitted(self, "standardizer_")
        x, mask = self._validate(X, reset=False)
        z, mask = self._standardised(x, mask)
        if self.energy_ is None:
            mean, chol = conditional_gaussian(z, mask, self.location_, self.precision_)
            return z, mask, chol, mean
        return z, mask, None, self._energy_draws(z, mask, 200, self._seed).mean(0)

    def _energy_draws(self, z: Tensor, mask: Tensor, num: int, seed: int) -> Tensor:
        from .imputation import impute

        table = torch.where(mask, z, torch.full((), math.nan, dtype=z.dtype, device=z.device))
        imps = impute(
            self._model(z.shape[1]),
            args=(table,),
            method="iw",
            num_draws=num,
            num_chains=1,
            num_particles=100 * int(self.num_particles),
            seed=seed,
        )
        return imps.draws[0]

    def _draws(self, X: Any, num: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
        z, mask, chol, mean = self._conditional(X)
        with torch.random.fork_rng(devices=_devices(z)):
            torch.manual_seed(seed)
            if chol is not None:
                draws = sample_conditional_gaussian(mean, chol, mask, num)[0]
            else:
                draws = self._energy_draws(z, mask, num, seed)
        return torch.where(mask, z, draws), mask, z

    def _output(self, z: Tensor, mask: Tensor, X: Any) -> np.ndarray:
        # back to the host once, and to original units in float64
        out = self.standardizer_.inverse(z.detach().cpu().to(torch.float64)).numpy()
        mask = mask.cpu()
        original = np.asarray(X, dtype=np.float64) if not is_dataframe(X) else None
        if original is None:
            original, _ = as_table(X, dtype=torch.float64)
            original = original.numpy()
        # observed entries are returned exactly as given (no round trip through the scaling)
        return np.where(mask.numpy(), original, out)

    def transform(self, X: Any) -> np.ndarray:
        """Fill the missing entries of ``X`` (conditional means, or one draw with
        ``sample_posterior=True``); observed entries are unchanged.

        :param X: ``(n, d)`` array or DataFrame with the columns seen in ``fit``.
        :returns: ``(n, d)`` float array (a DataFrame after ``set_output(transform="pandas")``).
        """
        if self.sample_posterior:
            draws, mask, _ = self._draws(X, 1, self._next_seed())
            return self._output(draws[0], mask, X)
        _, mask, _, mean = self._conditional(X)
        return self._output(mean, mask, X)

    def _next_seed(self) -> int:
        return int(check_random_state(self._seed).randint(2**31 - 1))

    def multiple_imputations(self, X: Any, n_imputations: int | None = None) -> list:
        """``n_imputations`` completed tables, each with its gaps drawn from the fitted
        conditional (multiple imputation: analyse each and pool with Rubin's rules).

        :param X: the table.
        :param n_imputations: how many (default: the ``n_imputations`` parameter).
        :returns: a list of arrays (DataFrames after ``set_output(transform="pandas")``).
        """
        k = int(self.n_imputations if n_imputations is None else n_imputations)
        draws, mask, _ = self._draws(X, k, self._next_seed())
        return [self._wrap(self._output(draws[i], mask, X), X) for i in range(k)]

    def interval(self, X: Any, prob: float = 0.9, num_draws: int = 1000) -> tuple:
        """Equal-tailed ``prob`` intervals of every entry in original units (zero width where
        observed): exact Gaussian quantiles for the Gaussian model, quantiles of
        ``num_draws`` importance-resampled draws otherwise.

        :returns: ``(lower, upper)`` arrays ``(n, d)``.
        """
        if not 0.0 < float(prob) < 1.0:
            raise ValueError(f"prob must be in (0, 1), got {prob}")
        z, mask, chol, mean = self._conditional(X)
        if chol is not None:
            covariance = torch.cholesky_inverse(chol)
            sd = torch.diagonal(covariance, dim1=-2, dim2=-1).clamp(min=0).sqrt()
            sd = torch.where(mask, torch.zeros_like(sd), sd)
            q = NormalDist().inv_cdf(0.5 + float(prob) / 2)
            lower, upper = mean - q * sd, mean + q * sd
        else:
            from .imputation import imputation_intervals

            draws, _, _ = self._draws(X, int(num_draws), self._seed)
            lower, upper = imputation_intervals(draws, prob)
        return self._output(lower, mask, X), self._output(upper, mask, X)

    def _wrap(self, values: np.ndarray, X: Any):
        config = getattr(self, "_sklearn_output_config", {}).get("transform", "default")
        if config != "pandas":
            return values
        import pandas as pd

        index = X.index if is_dataframe(X) else None
        return pd.DataFrame(values, columns=self.get_feature_names_out(), index=index)

    def get_feature_names_out(self, input_features: Sequence[str] | None = None) -> np.ndarray:
        """Output names: the input's (one output per input column).

        :param input_features: names to check against ``feature_names_in_`` (or to use when the
            estimator was fitted on an array).
        :returns: array of str.
        """
        check_is_fitted(self, "n_features_in_")
        names = getattr(self, "feature_names_in_", None)
        if input_features is not None:
            input_features = np.asarray(list(input_features), dtype=object)
            if len(input_features) != self.n_features_in_:
                raise ValueError(
                    f"input_features has {len(input_features)} names, expected "
                    f"{self.n_features_in_}"
                )
            if names is not None and not np.array_equal(input_features, names):
                raise ValueError("input_features is not equal to feature_names_in_")
            return input_features
        if names is not None:
            return np.asarray(names, dtype=object)
        return np.asarray([f"x{j}" for j in range(self.n_features_in_)], dtype=object)
