"""Time-series data model, loaders (.npz, .csv, .h5ad; good and bad files) and preprocessing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from otcfm.data.preprocess import Preprocessor, fit_preprocessor
from otcfm.data.timeseries import TimeSeries
from otcfm.data.timeseries_files import load_timeseries, save_populations, save_timeseries


def cells(seed=0, times=(0.0, 1.0, 2.0), n=20, d=3):
    g = torch.Generator().manual_seed(seed)
    pops = [torch.randn(n + k, d, generator=g) + k for k in range(len(times))]
    return pops, list(times)


# --------------------------------------------------------------------------- data model
def test_populations_round_trip_and_views():
    pops, times = cells()
    ts = TimeSeries.from_populations(pops, times)
    assert ts.dim == 3 and ts.n_times == 3
    assert ts.counts == (20, 21, 22)
    for k in range(3):
        assert torch.equal(ts.at(k), pops[k])
    assert torch.equal(ts.at(-1), pops[2])
    assert ts.time_names == ("0", "1", "2")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"times": (0.0,)}, "at least 2 time points"),
        ({"times": (0.0, 0.0, 1.0)}, "strictly increasing"),
        ({"times": (0.0, float("nan"), 1.0)}, "finite"),
    ],
)
def test_bad_times(kwargs, match):
    x = torch.zeros(6, 2)
    labels = torch.tensor([0, 0, 1, 1, 2, 2]) if len(kwargs["times"]) == 3 else torch.zeros(6)
    with pytest.raises(ValueError, match=match):
        TimeSeries(x, labels.long(), **kwargs)


def test_bad_labels_and_features():
    x = torch.zeros(4, 2)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        TimeSeries(x, torch.tensor([0, 1, 2, 1]), (0.0, 1.0))
    with pytest.raises(ValueError, match="no cells at time"):
        TimeSeries(x, torch.tensor([0, 0, 0, 0]), (0.0, 1.0))
    with pytest.raises(ValueError, match="one integer time index per cell"):
        TimeSeries(x, torch.tensor([0, 1, 1]), (0.0, 1.0))
    bad = x.clone()
    bad[1, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        TimeSeries(bad, torch.tensor([0, 1, 0, 1]), (0.0, 1.0))
    with pytest.raises(IndexError):
        TimeSeries(x, torch.tensor([0, 1, 0, 1]), (0.0, 1.0)).at(2)


def test_index_time_is_piecewise_linear_in_observed_time():
    pops, _ = cells(times=(0.0, 2.0, 3.0))
    ts = TimeSeries.from_populations(pops, (0.0, 2.0, 3.0))
    np.testing.assert_allclose(ts.to_index([0.0, 1.0, 2.0, 2.5, 3.0, 4.0]),
                               [0.0, 0.5, 1.0, 1.5, 2.0, 3.0], atol=1e-12)
    np.testing.assert_allclose(ts.from_index([0.5, 1.5, -1.0]), [1.0, 2.5, -2.0], atol=1e-12)


# --------------------------------------------------------------------------- .npz
def write_npz(path, pcs, labels, **extra):
    np.savez(path, pcs=pcs, sample_labels=labels, **extra)
    return path


def test_npz_trajectorynet_layout(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat([3.0, 0.0, 1.0, 2.0, 4.0], 10)  # unsorted on purpose
    pcs = rng.normal(size=(50, 7)) + labels[:, None]
    ts = load_timeseries(write_npz(tmp_path / "eb.npz", pcs, labels))
    assert ts.times == (0.0, 1.0, 2.0, 3.0, 4.0)
    assert ts.counts == (10,) * 5
    for k in range(5):
        np.testing.assert_allclose(ts.at(k).numpy(), pcs[labels == k], rtol=1e-6)


@pytest.mark.parametrize(
    "pcs, labels, kw, match",
    [
        (np.ones((6, 2)), np.zeros(6), {}, "single time point"),
        (np.ones((6, 2)), np.arange(5.0), {}, "5 time labels for 6 cells"),
        (np.ones((6, 2)), np.array([0, 0, 1, 1, np.nan, 1.0]), {}, "NaN or inf time"),
        (np.array([[1.0, np.nan]] + [[0.0, 0.0]] * 5), np.repeat([0, 1], 3), {}, "NaN or inf"),
        (np.ones((6, 2)), np.repeat([0, 1], 3), {"time_key": "day"}, "no time array 'day'"),
        (np.ones((6, 2)), np.repeat([0, 1], 3), {"npz_key": "X"}, "no array 'X'"),
        (np.ones((6, 2)), np.ones((6, 2)), {}, "must be 1-D"),
    ],
)
def test_npz_bad_files(tmp_path, pcs, labels, kw, match):
    path = write_npz(tmp_path / "bad.npz", pcs, labels)
    with pytest.raises(ValueError, match=match):
        load_timeseries(path, **kw)


def test_missing_file_and_unknown_extension(tmp_path):
    for name in ("nope.npz", "nope.tsv", "nope.txt"):  # not found, whatever the extension
        with pytest.raises(FileNotFoundError, match=rf"time-series file not found: .*{name}$"):
            load_timeseries(tmp_path / name)
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(ValueError, match="unsupported extension"):
        load_timeseries(tmp_path / "x.json")


# --------------------------------------------------------------------------- .csv
def write_csv(path, header, rows):
    path.write_text("\n".join([",".join(header)] + [",".join(map(str, r)) for r in rows]) + "\n")
    return path


def test_csv_time_column_and_features(tmp_path):
    rows = [[d, f"c{i}", i * 0.5, -i] for i, d in enumerate([2, 2, 4, 4, 7, 7, 7])]
    path = write_csv(tmp_path / "cells.csv", ["day", "cell", "g1", "g2"], rows)
    ts = load_timeseries(path, time_key="day", columns=["g1", "g2"])
    assert ts.times == (2.0, 4.0, 7.0)
    assert ts.counts == (2, 2, 3)
    assert ts.feature_names == ("g1", "g2")
    np.testing.assert_allclose(ts.at(2).numpy(), [[2.0, -4.0], [2.5, -5.0], [3.0, -6.0]])


@pytest.mark.parametrize(
    "header, rows, kw, match",
    [
        (["t", "a"], [[0, 1], [1, 2]], {}, r"no time column 'time'; columns: \['t', 'a'\] "
         r"\(name the time column: --time-key, or time_key= in Python\)"),
        (["time", "a"], [[3, 1], [3, 2]], {}, "single time point"),
        (["time", "a"], [[0, 1], [1, "nan"]], {}, "NaN or inf"),
        (["time", "a"], [[0, 1], [1, "inf"]], {}, "NaN or inf"),
        (["time", "a"], [[0, 1], ["", 2]], {}, "empty time value"),
        (["time"], [[0], [1]], {}, "no feature columns"),
        (["time", "a"], [["early", 1], ["late", 2]], {},
         r"not numbers \('early', 'late'\); list them .*--time-order .*data\.time_order"),
        (["0", "1"], [[0, 1], [1, 2]], {}, "no column names"),
        (["time", "a"], [[0, 1, 5], [1, 2]], {}, "3 fields, the header has 2"),
        (["time", "a"], [[0, 1], [1, 2]], {"columns": ["b"]}, r"no column\(s\) \['b'\]"),
    ],
)
def test_csv_bad_files(tmp_path, header, rows, kw, match):
    path = write_csv(tmp_path / "bad.csv", header, rows)
    with pytest.raises(ValueError, match=match):
        load_timeseries(path, **kw)


def test_csv_named_time_labels_with_order(tmp_path):
    rows = [["late", 3.0], ["early", 1.0], ["mid", 2.0], ["early", 1.5]]
    path = write_csv(tmp_path / "named.csv", ["time", "a"], rows)
    ts = load_timeseries(path, time_order=["early", "mid", "late"])
    assert ts.time_names == ("early", "mid", "late")
    assert ts.times == (0.0, 1.0, 2.0)
    np.testing.assert_allclose(ts.at(0).numpy().ravel(), [1.0, 1.5])
    with pytest.raises(ValueError, match=r"label\(s\) \['mid'\] of the data are not in it"):
        load_timeseries(path, time_order=["early", "late"])
    with pytest.raises(ValueError, match=r"\['lat'\] occur in no cell"):  # a typo: both named
        load_timeseries(path, time_order=["early", "mid", "lat"])
    with pytest.raises(ValueError, match=r"\['never'\] occur in no cell"):
        load_timeseries(path, time_order=["early", "mid", "never", "late"])


@pytest.mark.parametrize("ext", [".npz", ".csv", ".tsv"])
def test_save_load_round_trip(tmp_path, ext):
    pops, times = cells(times=(0.5, 1.0, 4.0))
    ts = TimeSeries.from_populations(pops, times)
    back = load_timeseries(save_timeseries(ts, tmp_path / f"ts{ext}"))
    assert back.times == ts.times
    for k in range(3):
        torch.testing.assert_close(back.at(k), ts.at(k), rtol=0, atol=0)


def test_save_populations_single_time(tmp_path):
    x = torch.arange(6.0).reshape(3, 2)
    path = save_populations(tmp_path / "one.csv", [x], [2.5], ["a", "b"])
    lines = path.read_text().splitlines()
    assert lines[0] == "time,a,b" and lines[1] == "2.5,0.0,1.0" and len(lines) == 4


# --------------------------------------------------------------------------- .h5ad
@pytest.fixture
def anndata():
    return pytest.importorskip("anndata")


def write_h5ad(anndata, path, x, obs, obsm=None):
    import pandas as pd

    adata = anndata.AnnData(X=x, obs=pd.DataFrame(obs, index=[f"c{i}" for i in range(x.shape[0])]))
    for key, value in (obsm or {}).items():
        adata.obsm[key] = value
    adata.write_h5ad(path)
    return path


def test_h5ad_time_from_obs_features_from_x_or_obsm(tmp_path, anndata):
    rng = np.random.default_rng(1)
    day = np.repeat([7, 2, 4, 3], 5)
    x = rng.normal(size=(20, 6)).astype(np.float32)
    emb = rng.normal(size=(20, 2))
    path = write_h5ad(anndata, tmp_path / "cite.h5ad", x, {"day": day}, {"X_pca": emb})
    ts = load_timeseries(path)  # finds obs["day"] by itself
    assert ts.times == (2.0, 3.0, 4.0, 7.0)
    assert ts.dim == 6 and ts.feature_names[0] == "0"
    np.testing.assert_allclose(ts.at(3).numpy(), x[day == 7])
    ts2 = load_timeseries(path, time_key="day", obsm_key="X_pca")
    np.testing.assert_allclose(ts2.at(0).numpy(), emb[day == 2], rtol=1e-6)


def test_h5ad_sparse_x_and_ordered_categories(tmp_path, anndata):
    import pandas as pd
    import scipy.sparse as sp

    stage = pd.Categorical(["late", "early", "mid", "early", "late", "mid"],
                           categories=["early", "mid", "late"], ordered=True)
    x = sp.csr_matrix(np.eye(6, 3, dtype=np.float32))
    path = write_h5ad(anndata, tmp_path / "s.h5ad", x, {"stage": stage})
    ts = load_timeseries(path, time_key="stage")
    assert ts.time_names == ("early", "mid", "late")
    np.testing.assert_allclose(ts.at(0).numpy(), np.eye(6, 3)[[1, 3]])


@pytest.mark.parametrize(
    "obs, x, kw, match",
    [
        ({"batch": np.arange(6)}, np.ones((6, 2)), {}, "no time column found among obs"),
        ({"day": np.arange(6)}, np.ones((6, 2)), {"time_key": "time"}, "no obs column 'time'"),
        ({"day": np.zeros(6)}, np.ones((6, 2)), {}, "single time point"),
        ({"day": np.repeat([0, 1], 3)}, np.array([[np.nan, 0.0]] + [[0.0, 0.0]] * 5), {},
         "NaN or inf"),
        ({"day": np.repeat([0, 1], 3)}, np.ones((6, 2)), {"obsm_key": "X_umap"},
         "no obsm embedding 'X_umap'"),
    ],
)
def test_h5ad_bad_files(tmp_path, anndata, obs, x, kw, match):
    path = write_h5ad(anndata, tmp_path / "bad.h5ad", x.astype(np.float32), obs)
    with pytest.raises(ValueError, match=match):
        load_timeseries(path, **kw)


def test_h5ad_not_hdf5(tmp_path, anndata):
    (tmp_path / "junk.h5ad").write_text("not hdf5")
    with pytest.raises(ValueError, match="cannot read as AnnData"):
        load_timeseries(tmp_path / "junk.h5ad")


# --------------------------------------------------------------------------- preprocessing
@pytest.fixture
def sklearn():
    return pytest.importorskip("sklearn")


def test_pca_inverse_recovers_data_in_a_subspace(sklearn):
    g = torch.Generator().manual_seed(0)
    basis, _ = torch.linalg.qr(torch.randn(12, 4, generator=g, dtype=torch.float64))
    x = (torch.randn(300, 4, generator=g, dtype=torch.float64) * torch.tensor([5.0, 3, 2, 1])
         ) @ basis.T + 3.0
    pre = fit_preprocessor(x.float(), dims=4)
    z = pre.transform(x.float())
    assert z.shape == (300, 4)
    torch.testing.assert_close(z.mean(0), torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.std(0, unbiased=False), torch.ones(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(pre.inverse_transform(z).double(), x, atol=1e-4, rtol=0)


def test_first_columns_standardised_like_numpy(sklearn):
    rng = np.random.default_rng(2)
    pcs = rng.normal(size=(200, 9)) * np.arange(1, 10)
    pre = fit_preprocessor(torch.from_numpy(pcs).float(), dims=5, pca=False)
    expect = (pcs[:, :5] - pcs[:, :5].mean(0)) / pcs[:, :5].std(0)
    np.testing.assert_allclose(pre.transform(torch.from_numpy(pcs).float()).numpy(), expect,
                               atol=1e-5)


def test_preprocessor_serialises(sklearn):
    x = torch.randn(100, 6, generator=torch.Generator().manual_seed(3))
    pre = fit_preprocessor(x, dims=3)
    state = json.loads(json.dumps(pre.to_dict()))
    back = Preprocessor.from_dict(state)
    torch.testing.assert_close(back.transform(x), pre.transform(x), atol=0, rtol=0)
    assert "PCA to 3 of 6" in back.description
    with pytest.raises(ValueError, match="transform expects"):
        pre.transform(torch.zeros(4, 5))
    with pytest.raises(ValueError, match="dims must be"):
        fit_preprocessor(x, dims=7)
