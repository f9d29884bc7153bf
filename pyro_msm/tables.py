"""User tables in, labelled results out: the one place that knows about pandas.

Every public entry point that takes a table (``observe``, ``impute``, ``to_inference_data``,
``GraphicalScoreMatching.fit``, ``ScoreMatchingImputer``, the command line) passes it through
:func:`as_table` first; results go back through :meth:`TableLabels.frame`. pandas is optional:
it is imported only when a DataFrame is given or asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["TableLabels", "Standardizer", "as_table", "is_dataframe"]


def is_dataframe(x: Any) -> bool:
    """Whether ``x`` is a pandas DataFrame (without importing pandas)."""
    return type(x).__module__.startswith("pandas") and hasattr(x, "columns") and hasattr(
        x, "iloc"
    )


@dataclass(frozen=True)
class TableLabels:
    """Row index and column names of a table, carried from input to results.

    :param columns: column names (strings), or None for an unlabelled array.
    :param index: the row labels (a pandas Index, or None).
    """

    columns: tuple[str, ...] | None = None
    index: Any = None

    @classmethod
    def default(cls, num_columns: int) -> TableLabels:
        """Names ``x0 .. x{d-1}`` (scikit-learn's ``get_feature_names_out`` convention)."""
        return cls(columns=tuple(f"x{j}" for j in range(num_columns)))

    def names(self, num_columns: int) -> list[str]:
        """Column names, defaulting to ``x0 .. x{d-1}``; checks the count."""
        if self.columns is None:
            return [f"x{j}" for j in range(num_columns)]
        if len(self.columns) != num_columns:
            raise ValueError(
                f"{len(self.columns)} column names for a table of {num_columns} columns"
            )
        return list(self.columns)

    def frame(self, values: Tensor | np.ndarray, columns: Sequence[str] | None = None):
        """``values`` (n, d) as a DataFrame with these labels (pandas required)."""
        import pandas as pd

        if isinstance(values, Tensor):
            values = values.detach().cpu().numpy()
        values = np.asarray(values)
        names = list(columns) if columns is not None else self.names(values.shape[-1])
        index = self.index if self.index is not None and len(self.index) == len(values) else None
        return pd.DataFrame(values, index=index, columns=names)


def _numeric_frame(df: Any, name: str) -> np.ndarray:
    """A DataFrame's values as float64 with NaN for every missing marker; refuses text columns."""
    import pandas as pd

    bad = [
        str(col)
        for col, dtype in df.dtypes.items()
        if not (pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype))
    ]
    if bad:
        shown = ", ".join(repr(c) for c in bad[:5]) + (" ..." if len(bad) > 5 else "")
        raise TypeError(
            f"{name}: column(s) {shown} are not numeric; drop or encode them first "
            f"(for example df.drop(columns=[...]) or pd.get_dummies)"
        )
    # pd.NA and None become NaN; nullable integer/boolean columns become float
    return df.astype("float64").to_numpy(dtype=np.float64, na_value=np.nan)


def as_table(
    x: Any,
    *,
    name: str = "X",
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> tuple[Tensor, TableLabels]:
    """A user's table as a floating tensor (NaN = missing) and its labels.

    Accepts a pandas DataFrame (NaN, None and ``pd.NA`` mark missing entries; non-numeric
    columns are refused with their names), a NumPy array or a tensor. Tensors keep their dtype
    and device unless ``dtype``/``device`` are given; NumPy and DataFrame input becomes ``dtype``
    (default: torch's default dtype).

    :param x: the table, shape ``(n, d)`` (other shapes pass through for the caller to check).
    :param name: how error messages call the table.
    :param dtype: floating dtype of the result.
    :param device: device of the result.
    :returns: ``(values, labels)``.
    :raises TypeError: for non-numeric columns or an unsupported type.
    """
    labels = TableLabels()
    if is_dataframe(x):
        labels = TableLabels(columns=tuple(str(c) for c in x.columns), index=x.index)
        x = _numeric_frame(x, name)
    if isinstance(x, np.ndarray):
        if x.dtype == object or not (
            np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.bool_)
        ):
            raise TypeError(f"{name} must be numeric, got dtype {x.dtype}")
        x = torch.tensor(x.astype(np.float64) if not np.issubdtype(x.dtype, np.floating) else x)
        x = x.to(dtype or torch.get_default_dtype())
    if not isinstance(x, Tensor):
        raise TypeError(
            f"{name} must be a pandas DataFrame, numpy array or torch.Tensor, "
            f"got {type(x).__name__}"
        )
    if not x.is_floating_point():
        x = x.to(dtype or torch.get_default_dtype())
    if dtype is not None or device is not None:
        x = x.to(dtype=dtype or x.dtype, device=device)
    return x, labels


@dataclass(frozen=True)
class Standardizer:
    r"""Column-wise standardisation fitted on the observed entries, and its inverse.

    Score matching and the Gaussian defaults of :mod:`pyro_msm` assume columns on comparable
    scales; a table in its original units (ppb, degrees, counts) is standardised with
    :math:`z = (x - \mu_j) / \sigma_j`, the model fitted to ``z``, and imputations converted back
    with :meth:`inverse` (draws) -- an interval ``[l, u]`` in standard units is
    ``[\mu_j + \sigma_j l, \mu_j + \sigma_j u]`` in the original ones.

    :ivar loc: ``(d,)`` mean of each column's observed entries.
    :ivar scale: ``(d,)`` standard deviation of each column's observed entries (1 for a column
        with fewer than two observations or no spread, so that it passes through unchanged).
    """

    loc: Tensor
    scale: Tensor

    @classmethod
    def fit(cls, x: Tensor, mask: Tensor | None = None) -> Standardizer:
        """Column means and standard deviations (``ddof=1``) of the observed entries.

        :param x: ``(n, d)``, NaN where missing unless ``mask`` is given.
        :param mask: boolean ``(n, d)``, True where observed.
        """
        mask = ~torch.isnan(x) if mask is None else mask
        m = mask.to(x.dtype)
        xf = torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))
        count = m.sum(0)
        loc = xf.sum(0) / count.clamp(min=1)
        var = (((xf - loc) * m) ** 2).sum(0) / (count - 1).clamp(min=1)
        scale = var.sqrt()
        ok = (count > 1) & (scale > 0) & torch.isfinite(scale)
        scale = torch.where(ok, scale, torch.ones_like(scale))
        loc = torch.where(count > 0, loc, torch.zeros_like(loc))
        return cls(loc=loc, scale=scale)

    def transform(self, x: Tensor) -> Tensor:
        """Standard units ``(x - loc) / scale`` (NaN stays NaN)."""
        return (x - self.loc.to(x)) / self.scale.to(x)

    def inverse(self, z: Tensor) -> Tensor:
        """Original units ``loc + scale * z``; ``z`` may have leading draw/chain dimensions."""
        return self.loc.to(z) + self.scale.to(z) * z
