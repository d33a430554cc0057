"""dsa.study.map_tables: ratios against the best dense backend, the crossover L and the cost model."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from dsa.study.map_tables import crossover, long_speedups, map_frame, model_ms

MLA = dict(layout="mla128", H=128, H_kv=1, d_qk=576, d_v=512, dense_H_kv=128, dense_d_qk=192, dense_d_v=128,
           k=2048, H_I=64, d_I=128, indexer_precision="bf16")


def _rec(rows, date="2026-12-01"):
    return {"provenance": {"device": "GPU X", "date": date}, "rows": rows}


def _row(l, cudnn, flash, dsa, **extra):
    return dict(MLA, L=l, dense_cudnn_fwd_ms=cudnn, dense_flash_fwd_ms=flash, dense_flex_fwd_ms=None,
                dense_cudnn_fwdbwd_ms=None, dsa_fwd_ms=dsa, dsa_fwdbwd_ms=None, **extra)


def test_speedup_is_over_the_best_dense_backend():
    df = map_frame([_rec([_row(4096, 3.0, 2.0, 4.0)])])
    fwd = df[df["pass"] == "fwd"].iloc[0]
    assert fwd.best_dense == "flash SDPA" and fwd.speedup == pytest.approx(0.5)
    assert fwd.speedup_cudnn == pytest.approx(0.75)
    assert np.isnan(df[df["pass"] == "fwdbwd"].iloc[0].speedup)  # nothing measured: no ratio


def test_crossover_is_the_first_l_winning_at_every_larger_l():
    rows = [_row(2048, 1, 1, 2), _row(4096, 4, 4, 3), _row(8192, 8, 8, 9), _row(16384, 30, 30, 10),
            _row(32768, 100, 100, 20)]
    cx = crossover(map_frame([_rec(rows)]))
    fwd = cx[cx["pass"].str.startswith("prefill")].iloc[0]
    assert fwd["DSA faster from L"] == 16384  # 4096 wins but 8192 loses again
    assert fwd["largest L measured"] == 32768 and fwd["speed-up there"] == pytest.approx(5.0)
    assert cx[cx["pass"].str.startswith("training")].iloc[0]["DSA faster from L"] == "not measured"
    losing = crossover(map_frame([_rec([_row(2048, 1, 1, 2), _row(4096, 1, 1, 2)])]))
    assert losing.iloc[0]["DSA faster from L"] == "not up to 4096"


def test_cost_model_grows_with_l_and_pays_more_with_fp8():
    sp = [np.divide(*model_ms(dict(MLA, L=l), "fwd")) for l in (2048, 8192, 32768, 131072)]
    assert all(a < b for a, b in itertools.pairwise(sp))
    assert sp[0] < 1 < sp[-1]  # at L = k the absorbed form costs 3.4x MHA mode per pair; at 128K DSA wins
    fp8 = np.divide(*model_ms(dict(MLA, L=131072, indexer_precision="fp8"), "fwd"))
    assert fp8 > sp[-1]
    # MHA 16 x 128 gathers its own K/V rows per head: bandwidth-bound, never pays in the model
    mha = dict(MLA, H=16, H_kv=16, d_qk=128, d_v=128, dense_d_qk=128, dense_d_v=128, H_I=4, d_I=64)
    assert np.divide(*model_ms(dict(mha, L=131072), "fwdbwd")) < 1


def test_long_frame_has_measured_and_model_rows():
    long = long_speedups(map_frame([_rec([_row(4096, 3.0, 2.0, 4.0)])]))
    assert set(long.source) == {"measured", "cost model"} and long["value"].notna().all()


def test_launch_profile_frame_one_row_per_category_with_labels():
    """dsa.bench.launch_profile results -> one row per (row, category): the pass labelled as in the map tables,
    the layer named, the shares as recorded."""
    from dsa.study.map_tables import PASS_LABELS, launch_profile_frame  # noqa: PLC0415

    res = {"provenance": {"device": "H200"}, "rows": [
        {"layer": "dsa", "pass": "fwd", "layout": "mla128", "L": 65536, "H_I": 64, "d_I": 128,
         "indexer_precision": "fp8", "categories": {"indexer scores": {"ms": 3.0, "share": 0.75},
                                                    "top-k": {"ms": 1.0, "share": 0.25}}},
        {"layer": "dense", "pass": "fwdbwd", "layout": "mla128", "L": 65536, "H_I": 64, "d_I": 128,
         "indexer_precision": "fp8", "categories": {"dense attention": {"ms": 2.0, "share": 1.0}}}]}
    f = launch_profile_frame([res])
    assert len(f) == 3 and set(f.layer) == {"DSA", "dense"}
    assert f[f.category == "top-k"].iloc[0][["indexer", "pass", "ms"]].tolist() == [
        "64x128 fp8", PASS_LABELS["fwd"], 1.0]
    assert f.groupby(["layer", "pass"]).share.sum().tolist() == [1.0, 1.0]


def test_a_point_measured_twice_takes_the_newest_timed_row():
    """A re-run after a kernel change replaces the old row (not averaged, not drawn twice); a newer row cut
    by the budget (no DSA time) does not replace a timed one."""
    old = _rec([_row(4096, 3.0, 3.0, 4.0), _row(8192, 9.0, 9.0, 6.0)], date="2026-12-01T10:00")
    new = _rec([_row(4096, 3.0, 3.0, 2.0), _row(8192, 9.0, 9.0, None, dsa_fwd_why="budget")], date="2026-12-02")
    for recs in ([old, new], [new, old]):  # file order does not matter
        fwd = map_frame(recs).query("`pass` == 'fwd'").set_index("L")
        assert list(fwd.index) == [4096, 8192]
        assert fwd.loc[4096, "speedup"] == pytest.approx(1.5) and fwd.loc[4096, "superseded"] == 1
        assert fwd.loc[8192, "speedup"] == pytest.approx(1.5) and fwd.loc[8192, "date"] == "2026-12-01T10:00"


def test_rows_older_than_a_rerun_of_their_series_are_stale():
    """A re-run that timed some lengths again (after a kernel change) marks the series' older rows it did not
    reach as stale; a run that only adds new lengths marks nothing."""
    old = _rec([_row(2048, 1.0, 1.0, 2.0), _row(4096, 3.0, 3.0, 4.0)], date="2026-12-01")
    rerun = _rec([_row(4096, 3.0, 3.0, 2.0), _row(8192, 9.0, 9.0, 5.0)], date="2026-12-02")
    fwd = map_frame([old, rerun]).query("`pass` == 'fwd'").set_index("L")
    assert fwd.stale.tolist() == [True, False, False]
    extension = _rec([_row(8192, 9.0, 9.0, 5.0)], date="2026-12-02")
    assert not map_frame([old, extension]).stale.any()
