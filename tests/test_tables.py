"""The table adapter: DataFrames, arrays and tensors in; labels carried out."""

import numpy as np
import pandas as pd
import pytest
import torch

from pyro_msm.tables import TableLabels, as_table, is_dataframe


def test_dataframe_missing_markers_become_nan_and_names_are_kept():
    df = pd.DataFrame(
        {
            "a": [1.0, np.nan, 3.0],
            "b": pd.array([1, None, 2], dtype="Int64"),
            "c": [0.5, 1.5, None],
        },
        index=["r1", "r2", "r3"],
    )
    x, labels = as_table(df, dtype=torch.float64)
    assert is_dataframe(df) and not is_dataframe(x)
    assert x.dtype == torch.float64 and x.shape == (3, 3)
    assert torch.equal(torch.isnan(x), torch.tensor(df.isna().to_numpy()))
    assert torch.equal(x[0], torch.tensor([1.0, 1.0, 0.5], dtype=torch.float64))
    assert labels.columns == ("a", "b", "c")
    out = labels.frame(torch.zeros(3, 3))
    assert list(out.columns) == ["a", "b", "c"] and list(out.index) == ["r1", "r2", "r3"]


def test_text_column_is_refused_by_name():
    df = pd.DataFrame({"a": [1.0, 2.0], "city": ["x", "y"]})
    with pytest.raises(TypeError, match="'city'"):
        as_table(df)


def test_arrays_and_tensors():
    x, labels = as_table(np.arange(6).reshape(3, 2))
    assert x.dtype == torch.get_default_dtype() and labels.columns is None
    assert labels.names(2) == ["x0", "x1"]
    t = torch.ones(2, 2, dtype=torch.float64)
    y, _ = as_table(t)
    assert y is t
    with pytest.raises(TypeError, match="numeric"):
        as_table(np.array([["a", "b"]]))
    with pytest.raises(TypeError, match="DataFrame"):
        as_table([[1.0, 2.0]])
    with pytest.raises(ValueError, match="2 column names"):
        TableLabels(columns=("a", "b")).names(3)
