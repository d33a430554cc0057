"""Notebook 07's helpers: the cache check, the selection matrix and stepper, the decode benchmark tables."""

from __future__ import annotations

import pytest
import torch

from dsa.bench.decode import DecodeBenchConfig, run
from dsa.inference import generate
from dsa.model import ModelConfig, TransformerLM
from dsa.study import inference as I


def _model():
    return TransformerLM(ModelConfig(vocab_size=50, d_model=32, n_heads=2, max_seq_len=64, attention="dsa", top_k=4,
                                     indexer_dim=16, indexer_rope_dim=8, impl="reference"), seed=2).eval()


def test_cache_check_and_selection_matrix():
    m = _model()
    c = I.cache_check(m, torch.randint(0, 50, (2, 13)), 5)
    assert c["max_abs_diff"] < 1e-4 and c["selections_equal"] is True
    with pytest.raises(ValueError, match="prompt_len"):
        I.cache_check(m, torch.randint(0, 50, (2, 13)), 13)
    gen = generate(m, [[1, 2, 3], [4, 5, 6, 7, 8, 9]], 5, temperature=0, record_selection=True)
    mat = I.selection_matrix(gen, 0, 1)
    assert mat.shape == (5, 3 + 5)
    for step, row in enumerate(mat):  # the token fed at step i sits at position 2 + i: min(k, its context) picks
        pos = 2 + step
        assert row.sum() == min(4, pos + 1) and row[pos + 1:].sum() == 0
    st = I.SelectionStepper(gen, 1, [4, 5, 6, 7, 8, 9] + gen.tokens[1], lambda ids: str(ids[0]))
    v = st.view(4)
    assert v["pos"] == 9 and v["z"].shape == (2, 11) and v["k"] == 4


def test_decode_tables_from_a_cpu_run():
    res = run(DecodeBenchConfig(layouts=["mla"], contexts=[20, 33], batches=[1], top_k=6, request_contexts=[12],
                                gen_tokens=2), log=lambda s: None)
    frame = I.decode_frame([res])
    assert set(frame.method) == {"dense", "dense_sdpa", "dsa", "dsa_indexer_topk", "dsa_indexer_scores", "dsa_sparse",
                                 "dsa_topk", "dsa_topk_split", "dsa_topk_torch", "dsa_topk_torch_exact"}
    assert len(frame) == 2 * 10 and not frame.ms.isna().any()
    sp = I.speedup_table([res])
    assert list(sp.context) == [20, 33] and sp["DSA % of HBM"].isna().all()  # no bandwidth on a CPU
    req = I.request_table([res])
    assert len(req) == 1
    assert req.speedup_request.iloc[0] == pytest.approx(req.request_dense_ms.iloc[0] / req.request_dsa_ms.iloc[0])
    assert sp["x vs dense kernel"].tolist() == pytest.approx(
        [r["dense_ms"] / r["dsa_ms"] for r in res["rows"] if r["kind"] == "decode"])
    assert sp["x vs best dense"].tolist() == pytest.approx(
        [min(r["dense_ms"], r["dense_sdpa_ms"]) / r["dsa_ms"] for r in res["rows"] if r["kind"] == "decode"])
    fig = I.decode_cost_figure(frame, "t")
    assert len(fig.axes) == 2


def test_fp8_key_rows_are_separate_dsa_methods_in_the_tables():
    row = {"kind": "decode", "layout": "mla", "context": 64, "batch": 2, "indexer_dtype": "fp8"}
    row |= {f"{m}_{k}": 1.0 for m in ("dense", "dsa") for k in ("ms", "tokens_per_s", "gbps")}
    frame = I.decode_frame([{"rows": [row, {**row, "indexer_dtype": None, "dsa_ms": 2.0}]}])
    assert sorted(frame.method) == ["dense", "dense", "dsa", "dsa_fp8"]
    sp = I.speedup_table([{"rows": [row]}])
    assert sp["indexer keys"].tolist() == ["fp8"]
    fig = I.decode_cost_figure(frame, "t")
    assert any("FP8 keys" in t.get_text() for ax in fig.axes for t in ax.get_legend().get_texts())


def test_decode_parts_split_the_step_and_skip_rows_without_the_split():
    """The top-k's part is the indexer step minus its scores; shares add to 1; a row recorded before the scores
    were timed alone is left out."""
    rows = [{"kind": "decode", "layout": "mla", "context": 8192, "batch": 16, "dsa_indexer_scores_ms": 0.2,
             "dsa_indexer_topk_ms": 0.9, "dsa_sparse_ms": 0.3, "dsa_hbm_frac": 0.1},
            {"kind": "decode", "layout": "mla", "context": 4096, "batch": 16, "dsa_indexer_topk_ms": 0.5,
             "dsa_sparse_ms": 0.3}]
    f = I.decode_parts_frame([{"rows": rows}]).set_index("part")
    assert list(f.index) == ["indexer scores", "top-k", "sparse attention"] and set(f.context) == {8192}
    assert f.loc["top-k", "ms"] == pytest.approx(0.7) and f.share.sum() == pytest.approx(1.0)
    assert f.loc["top-k", "share"] == pytest.approx(0.7 / 1.2)
