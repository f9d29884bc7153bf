r"""Imputations as ArviZ objects: :func:`to_inference_data`.

The object has these groups (``x`` stands for the data site's name):

.. list-table::
   :header-rows: 1

   * - group
     - variables
     - dims
   * - ``posterior``
     - ``x``: the completed tables; ``x_missing``: the missing entries only
     - (chain, draw, row, feature); (chain, draw, entry)
   * - ``observed_data``
     - ``x``: the data, NaN where missing
     - (row, feature)
   * - ``constant_data``
     - ``x_mask``: True where observed
     - (row, feature)
   * - ``imputation_stats``
     - ``ess`` (IW only): effective sample size of each row's importance weights
     - (chain, row)
   * - ``training`` (when given)
     - ``loss``, ``ess``, ...: one value per training step
     - (step)

The ``entry`` coordinate of ``x_missing`` labels each missing entry ``"row, feature"`` (with
the row and column names when given), and its non-index coordinates ``entry_row`` and
``entry_feature`` hold the two parts, so ``az.summary(idata, var_names=["x_missing"])`` has one
line per missing entry. ``imputation_stats`` and ``training`` are groups of their own (their
dims are not ``(chain, draw)``, so they are not ``sample_stats``).

One adapter, :func:`assemble`, turns the groups (built as :class:`xarray.Dataset` objects with
explicit dims and coordinates, the construction behind ArviZ's ``from_dict``) into the object of
the installed ArviZ: an :class:`arviz.InferenceData` for ArviZ 0.x, an :class:`xarray.DataTree`
for ArviZ 1.x (which needs Python 3.12 or later). ArviZ's ``from_pyro`` is not used: it only
accepts an MCMC run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from torch import Tensor

from .imputation import Imputations, draws_from_inference_data, impute
from .tables import Standardizer

__all__ = ["to_inference_data", "assemble", "draws_from_inference_data", "arviz_major_version"]


def arviz_major_version() -> int:
    """The major version of the installed ArviZ (0 for 0.x, 1 for 1.x)."""
    import arviz

    return int(str(arviz.__version__).split(".")[0])


def assemble(groups: Mapping[str, Any], attrs: Mapping[str, Any], *, datatree: bool | None = None):
    """Combine :class:`xarray.Dataset` groups into the installed ArviZ's object.

    :param groups: group name -> dataset.
    :param attrs: attributes of the whole object.
    :param datatree: build an :class:`xarray.DataTree` (ArviZ 1.x) or an
        :class:`arviz.InferenceData` (0.x); default: follow the installed ArviZ.
    :returns: the ArviZ object.
    """
    if datatree is None:
        datatree = arviz_major_version() >= 1
    if datatree:
        import xarray as xr

        tree = xr.DataTree.from_dict(dict(groups))
        tree.attrs.update(attrs)
        return tree
    import arviz

    return arviz.InferenceData(attrs=dict(attrs), **dict(groups))


def _labels(values: Any, size: int, what: str) -> np.ndarray:
    if values is None:
        return np.arange(size)
    labels = np.asarray(list(values))
    if labels.shape != (size,):
        raise ValueError(f"{what} has {labels.size} labels for {size} {what}")
    if len(set(labels.tolist())) != size:
        raise ValueError(f"{what} labels must be unique")
    return labels


def _training_arrays(training: Any) -> dict[str, np.ndarray]:
    """Training diagnostics as named 1-D arrays of equal length."""
    if training is None:
        return {}
    if isinstance(training, Mapping):
        series = dict(training)
    elif hasattr(training, "losses"):  # e.g. pyro_msm.experiments.FitResult
        series = {"loss": training.losses, "ess": getattr(training, "ess", [])}
    elif isinstance(training, Sequence) or isinstance(training, (np.ndarray, Tensor)):
        series = {"loss": training}
    else:
        raise TypeError(
            "training must be a mapping name -> values per step, a list of losses, or an "
            f"object with a 'losses' attribute, got {type(training).__name__}"
        )
    arrays = {}
    for name, values in series.items():
        if isinstance(values, Tensor):
            values = values.detach().cpu().numpy()
        array = np.asarray(values, dtype=float)
        if array.ndim != 1:
            raise ValueError(f"training '{name}' must be one value per step")
        if array.size:
            arrays[str(name)] = array
    lengths = {name: a.size for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"training series have different lengths {lengths}")
    return arrays


def to_inference_data(
    source: Callable | Imputations,
    guide: Callable | None = None,
    *,
    args: Sequence[Any] = (),
    kwargs: dict[str, Any] | None = None,
    columns: Sequence[Any] | None = None,
    rows: Sequence[Any] | None = None,
    training: Any = None,
    standardizer: Standardizer | None = None,
    datatree: bool | None = None,
    **impute_options: Any,
):
    """Imputations of the missing entries as an ArviZ object (groups in the module doc).

    With a model, draws imputations with :func:`~pyro_msm.imputation.impute` first (from the
    trained guide, by importance resampling, or exactly for a Gaussian model); with
    :class:`~pyro_msm.imputation.Imputations`, converts them. ``az.summary``, ``az.hdi``,
    ``az.plot_forest`` and ``az.plot_posterior`` work on the result; for a summary of the
    missing entries only use ``var_names=["x_missing"]`` (``x`` the site's name).

    Example::

        idata = pyro_msm.to_inference_data(model, guide, args=(table,), columns=df.columns,
                                           training={"loss": losses})
        az.summary(idata, var_names=["x_missing"], kind="stats")

    :param source: the fitted model, or :class:`~pyro_msm.imputation.Imputations`.
    :param guide: the trained guide (for ``method="guide"``).
    :param args: positional arguments of the model and guide.
    :param kwargs: keyword arguments of the model and guide.
    :param columns: names of the ``d`` features; default: the DataFrame's column names when the
        model observed a DataFrame (:attr:`Imputations.labels`), else ``0..d-1``.
    :param rows: labels of the ``n`` rows; default: the DataFrame's index, else ``0..n-1``.
    :param training: training diagnostics: a mapping name -> one value per step (e.g.
        ``{"loss": losses, "ess": ess}``), a list of losses, or an object with ``losses`` (and
        ``ess``) attributes such as :class:`~pyro_msm.experiments.FitResult`.
    :param standardizer: the :class:`~pyro_msm.tables.Standardizer` the table was standardised
        with before fitting: the draws and data are converted back to original units
        (:meth:`Imputations.rescale`) and the object's attributes say so.
    :param datatree: force the ArviZ 1.x (:class:`xarray.DataTree`) or 0.x
        (:class:`arviz.InferenceData`) container; default: follow the installed ArviZ.
    :param impute_options: ``method``, ``loss``, ``num_draws``, ``num_chains``,
        ``num_particles``, ``proposal``, ``missingness``, ``site``, ``seed`` of
        :func:`~pyro_msm.imputation.impute`.
    :returns: :class:`arviz.InferenceData` (ArviZ 0.x) or :class:`xarray.DataTree` (1.x).
    :raises ValueError: for labels that do not match the table, or drawing options given
        together with ready :class:`~pyro_msm.imputation.Imputations`.
    """
    import xarray as xr

    if isinstance(source, Imputations):
        if guide is not None or args or kwargs or impute_options:
            raise ValueError(
                "to_inference_data: the imputations are already drawn; guide, args, kwargs and "
                "drawing options apply only when a model is given"
            )
        imputations = source
    elif callable(source):
        imputations = impute(source, guide, args=args, kwargs=kwargs, **impute_options)
    else:
        raise TypeError(
            f"to_inference_data: source must be a model or Imputations, got {type(source).__name__}"
        )
    if standardizer is not None:
        imputations = imputations.rescale(standardizer)
    labels = imputations.labels
    if labels is not None:
        if columns is None and labels.columns is not None:
            columns = labels.columns
        if rows is None and labels.index is not None and len(labels.index) == len(
            imputations.mask
        ):
            rows = labels.index
    name = imputations.site
    draws = imputations.draws.detach().cpu().numpy()
    chains, num_draws, n, d = draws.shape
    mask = imputations.mask.detach().cpu().numpy().astype(bool)
    observed = imputations.observed.detach().cpu().numpy()
    row_labels = _labels(rows, n, "rows")
    feature_labels = _labels(columns, d, "columns")

    coords = {
        "chain": np.arange(chains),
        "draw": np.arange(num_draws),
        "row": row_labels,
        "feature": feature_labels,
    }
    missing_rows, missing_features = np.nonzero(~mask)
    entries = np.char.add(
        np.char.add(row_labels[missing_rows].astype(str), ", "),
        feature_labels[missing_features].astype(str),
    )
    posterior = xr.Dataset(
        {
            name: (("chain", "draw", "row", "feature"), draws),
            f"{name}_missing": (
                ("chain", "draw", "entry"),
                draws[:, :, missing_rows, missing_features],
            ),
        },
        coords={
            **coords,
            "entry": entries,
            "entry_row": ("entry", row_labels[missing_rows]),
            "entry_feature": ("entry", feature_labels[missing_features]),
        },
        attrs={"imputation_method": imputations.method},
    )
    table_coords = {"row": row_labels, "feature": feature_labels}
    groups: dict[str, Any] = {
        "posterior": posterior,
        "observed_data": xr.Dataset({name: (("row", "feature"), observed)}, coords=table_coords),
        "constant_data": xr.Dataset(
            {f"{name}_mask": (("row", "feature"), mask)}, coords=table_coords
        ),
    }
    if imputations.ess is not None:
        groups["imputation_stats"] = xr.Dataset(
            {"ess": (("chain", "row"), imputations.ess.detach().cpu().numpy())},
            coords={"chain": coords["chain"], "row": row_labels},
            attrs={"num_particles": int(imputations.num_particles or 0)},
        )
    series = _training_arrays(training)
    if series:
        steps = next(iter(series.values())).size
        groups["training"] = xr.Dataset(
            {key: (("step",), values) for key, values in series.items()},
            coords={"step": np.arange(1, steps + 1)},
        )
    attrs = {
        "inference_library": "pyro_msm",
        "site": name,
        "imputation_method": imputations.method,
        "missing_rate": float((~mask).mean()) if mask.size else math.nan,
        "units": "original" if standardizer is not None else "as fitted",
    }
    loss = impute_options.get("loss")
    if loss is not None and hasattr(loss, "estimator"):
        attrs["estimator"] = str(loss.estimator)
    if imputations.num_particles is not None:
        attrs["num_particles"] = int(imputations.num_particles)
    return assemble(groups, attrs, datatree=datatree)
