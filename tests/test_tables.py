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


# -- round trips through the public API --------------------------------------------------------


def _gaussian_frame(n: int = 40, seed: int = 0) -> pd.DataFrame:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g, dtype=torch.float64)
    x[torch.rand(n, 3, generator=g) < 0.25] = float("nan")
    x[:, 0][torch.isnan(x).all(-1)] = 0.0
    index = pd.Index([f"day{i}" for i in range(n)], name="day")
    return pd.DataFrame(x.numpy(), columns=["ozone", "wind", "temp"], index=index)


def test_observe_impute_and_arviz_keep_column_names_and_index():
    import pyro

    from pyro_msm import impute, observe, to_inference_data
    from pyro_msm.distributions import GaussianEnergy

    df = _gaussian_frame()
    df["wind"] = df["wind"].astype("Float64")  # a nullable column: pd.NA marks missing
    energy = GaussianEnergy(torch.zeros(3, dtype=torch.float64), torch.eye(3, dtype=torch.float64))

    def model(table):
        with pyro.plate("rows", len(table)):
            return observe("x", energy, obs=table)

    completed = model(df)
    assert completed.dtype == torch.float64 and completed.shape == (40, 3)
    imps = impute(model, args=(df,), method="exact", num_draws=20, num_chains=2, seed=0)
    assert imps.labels.columns == ("ozone", "wind", "temp")
    frame = imps.frame()
    assert list(frame.columns) == list(df.columns) and frame.index.equals(df.index)
    observed = df.notna().to_numpy()
    # observed entries come back untouched, in place
    assert np.array_equal(frame.to_numpy()[observed], df.astype(float).to_numpy()[observed])
    idata = to_inference_data(imps)
    posterior = idata.posterior
    assert list(posterior["feature"].values) == ["ozone", "wind", "temp"]
    assert list(posterior["row"].values) == list(df.index)
    first = np.argwhere(~observed)[0]
    entry = f"{df.index[first[0]]}, {df.columns[first[1]]}"
    assert entry in list(posterior["entry"].values)


def test_standardizer_round_trip_and_rescaled_imputations():
    from pyro_msm.imputation import Imputations
    from pyro_msm.tables import Standardizer

    df = _gaussian_frame(seed=3) * [10.0, 0.5, 3.0] + [100.0, -2.0, 0.0]
    x, labels = as_table(df, dtype=torch.float64)
    st = Standardizer.fit(x)
    z = st.transform(x)
    mask = ~torch.isnan(x)
    # observed entries of each standardised column have mean 0 and sd 1
    for j in range(3):
        col = z[mask[:, j], j]
        assert abs(float(col.mean())) < 1e-12 and abs(float(col.std()) - 1) < 1e-12
    assert torch.allclose(st.inverse(z)[mask], x[mask])
    draws = torch.randn(2, 5, *x.shape, dtype=torch.float64)
    imps = Imputations("x", torch.where(mask, z, draws), torch.nan_to_num(z), mask, "exact",
                       labels=labels)
    back = imps.rescale(st)
    assert torch.allclose(back.draws[:, :, mask], x[mask].expand(2, 5, -1))
    lo, hi = imps.interval(0.9)
    lo2, hi2 = back.interval(0.9)
    assert torch.allclose(lo2, st.inverse(lo)) and torch.allclose(hi2, st.inverse(hi))
    with pytest.raises(TypeError, match="'label'"):
        from pyro_msm import observe
        from pyro_msm.distributions import GaussianEnergy

        observe("x", GaussianEnergy(torch.zeros(2), torch.eye(2)),
                obs=pd.DataFrame({"a": [1.0], "label": ["u"]}))
