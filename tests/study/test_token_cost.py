"""Cost per million tokens against position (dsa.study.token_cost): the dollar conversion, the marginal prefill
cost from the map's whole-sequence times, decode cost per token from a step over a batch, the ratio table,
and the figure from the recorded GPU data passing the figure checks."""

from __future__ import annotations

import copy
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from dsa.records import data_dir  # noqa: E402
from dsa.study import figcheck as C  # noqa: E402
from dsa.study.token_cost import (  # noqa: E402
    TokenCost,
    cost_ratio_table,
    decode_cost_frame,
    prefill_cost_frame,
    token_cost_figure,
)


def _map_result(times: dict[int, tuple[float, float]]) -> dict:
    """A map file whose rows (templated on a recorded one) have dense / DSA forward ms given per L."""
    rec = json.loads((data_dir() / "bench/map/h200-map-mqa64.json").read_text())
    tpl = next(r for r in rec["rows"] if r["H_I"] == 64 and r.get("indexer_precision") == "bf16")
    rows = []
    for l, (dense, dsa) in times.items():
        r = copy.deepcopy(tpl) | {"L": l, "dsa_fwd_ms": dsa}
        for key in [k for k in r if k.startswith("dense_") and k.endswith("_ms")]:
            r[key] = None
        r["dense_cudnn_fwd_ms"] = dense
        rows.append(r)
    return {"rows": rows, "provenance": rec["provenance"]}


def test_dollars_per_million_tokens():
    # 1 ms per token = 1000 s per million tokens = 1/3.6 h: at $3.6 per GPU-hour, $1; 61 layers cost 61x
    assert TokenCost(3.6).usd_per_million(1.0) == pytest.approx(1.0)
    assert TokenCost(3.6, layers=61).usd_per_million([1.0, 2.0]) == pytest.approx([61.0, 122.0])
    for bad in ({"usd_per_gpu_hour": 0}, {"usd_per_gpu_hour": True}, {"usd_per_gpu_hour": "2"},
                {"usd_per_gpu_hour": float("nan")}, {"layers": 0}, {"layers": 2.0}, {"layers": True}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            TokenCost(**bad)


def test_prefill_cost_is_the_marginal_time_per_token(gen):
    a, c = 1e-7, 2e-4  # dense T = a L^2 (quadratic); DSA T = c L (linear): marginals a (L1 + L2) and c
    ls = [1024, 2048, 4096, 8192]
    p = prefill_cost_frame([_map_result({l: (a * l * l, c * l) for l in ls})], TokenCost(3.6),
                           indexers=("64x128 bf16",))
    dense = p[p.method.str.startswith("dense")].sort_values("position")
    dsa = p[p.method.str.startswith("DSA")].sort_values("position")
    assert dense.position.tolist() == [1536, 3072, 6144]
    assert dense.ms_per_token.to_numpy() == pytest.approx([a * (l1 + l2) for l1, l2 in zip(ls, ls[1:])])
    assert dsa.ms_per_token.to_numpy() == pytest.approx([c] * 3)
    assert p.usd_per_mtok.to_numpy() == pytest.approx(p.ms_per_token.to_numpy())  # $3.6/h: $ = ms


def test_a_length_without_a_time_is_spanned_not_zero():
    p = prefill_cost_frame([_map_result({1024: (1.0, 2.0), 2048: (3.0, None), 4096: (9.0, 4.0)})],
                           indexers=("64x128 bf16",))
    dsa = p[p.method.str.startswith("DSA")]
    assert dsa[["from_L", "to_L"]].values.tolist() == [[1024, 4096]]
    assert dsa.ms_per_token.iloc[0] == pytest.approx(2.0 / 3072)


def test_an_interval_whose_time_fell_is_left_out():
    p = prefill_cost_frame([_map_result({1024: (1.0, 3.0), 2048: (3.0, 2.5), 4096: (9.0, 4.0)})],
                           indexers=("64x128 bf16",))
    dsa = p[p.method.str.startswith("DSA")]
    assert dsa[["from_L", "to_L"]].values.tolist() == [[2048, 4096]]


def test_decode_cost_is_the_step_over_the_batch_and_the_ratio_table():
    rows = [{"kind": "decode", "layout": "mla", "context": s, "batch": b, "dense_ms": 0.01 * s / 1024 * b ** 0.5,
             "dsa_ms": 0.2 * b ** 0.5} for s in (4096, 65536) for b in (1, 16)]
    d = decode_cost_frame([{"rows": rows + [{"kind": "request"}]}], TokenCost(3.6))
    got = d[(d.batch == 16) & (d.position == 65536)].set_index("method").ms_per_token
    assert got["DSA"] == pytest.approx(0.2 * 4 / 16)
    assert got["dense (best kernel)"] == pytest.approx(0.01 * 64 * 4 / 16)
    t = cost_ratio_table(_empty_prefill(), d, batch=16)
    assert t.stage.unique().tolist() == ["decode, batch 16"]
    assert t.set_index("position").dense_over_dsa.to_dict() == pytest.approx({4096: 0.2, 65536: 3.2})


def test_decode_dense_cost_is_the_faster_kernel_at_each_point():
    """At batch 64 SDPA beats the split-K kernel for MLA (measured on an H200): dense costs what the faster of
    the two takes at each point, either way round."""
    rows = [{"kind": "decode", "layout": "mla", "context": 8192, "batch": b, "dense_ms": split, "dense_sdpa_ms": sdpa,
             "dsa_ms": 0.5} for b, split, sdpa in ((16, 1.0, 2.0), (64, 4.0, 2.5))]
    d = decode_cost_frame([{"rows": rows}], TokenCost(3.6)).set_index(["batch", "method"]).ms_per_token
    assert d[(16, "dense (best kernel)")] == pytest.approx(1.0 / 16)
    assert d[(64, "dense (best kernel)")] == pytest.approx(2.5 / 64)


def _empty_prefill():
    return prefill_cost_frame([{"rows": [], "provenance": {}}])


def test_the_figure_from_the_recorded_gpu_data_passes_the_checks():
    maps = [json.loads(p.read_text()) for p in sorted((data_dir() / "bench/map").glob("*.json"))]
    decs = [json.loads(p.read_text()) for p in sorted((data_dir() / "bench/decode").glob("*.json"))]
    cost = TokenCost(layers=61)
    p, d = prefill_cost_frame(maps, cost), decode_cost_frame(decs, cost)
    assert {"MLA-MQA 128 x 576/512", "MQA 64 x 128"} <= set(p.layout) & set(d.layout)
    assert np.isfinite(p.usd_per_mtok).all() and np.isfinite(d.usd_per_mtok).all()
    fig = token_cost_figure(p[p.layout.isin(set(d.layout))], d, cost, "recorded")
    assert C.check_figure(fig) == []
    plt.close(fig)


def test_fp8_key_runs_are_their_own_method_and_dense_is_one_point_per_position():
    def run(dtype, dsa_ms):
        return {"rows": [{"kind": "decode", "layout": "mla", "context": 8192, "batch": 4, "indexer_dtype": dtype,
                          "dense_ms": dense, "dsa_ms": dsa_ms} for dense in (1.0,)]}

    d = decode_cost_frame([run("bf16", 0.5), run("fp8", 0.25), {"rows": [
        {"kind": "decode", "layout": "mla", "context": 8192, "batch": 4, "dense_ms": 3.0, "dsa_ms": 0.5}]}],
        TokenCost(3.6))
    assert sorted(d.method) == ["DSA", "DSA, FP8 keys", "dense (best kernel)"]
    assert d.set_index("method").ms_per_token.to_dict() == pytest.approx(
        {"DSA": 0.5 / 4, "DSA, FP8 keys": 0.25 / 4, "dense (best kernel)": 1.0 / 4})  # median of 1, 1, 3
    t = cost_ratio_table(_empty_prefill(), d, batch=4)
    assert t.set_index("stage").dense_over_dsa.to_dict() == pytest.approx(
        {"decode, batch 4": 2.0, "decode, batch 4, FP8 keys": 4.0})


def test_position_ticks_skip_a_label_too_close_to_the_last():
    """Mid positions 10K and 12K (intervals of different indexers) would print as "10K12K" on a log axis: the
    second gets no label; well separated positions keep theirs."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    import pandas as pd  # noqa: PLC0415

    from dsa.study.token_cost import _position_ticks  # noqa: PLC0415

    fig, ax = plt.subplots()
    ax.set_xscale("log")
    _position_ticks(ax, pd.Series([3072.0, 10240.0, 12288.0, 24576.0, 3072.0]))
    assert [t.get_text() for t in ax.get_xticklabels()] == ["3K", "10K", "24K"]
    plt.close(fig)
