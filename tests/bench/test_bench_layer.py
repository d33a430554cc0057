"""dsa.bench.layer on CPU at a tiny size: the model's own layers timed, raw timings only (ratios derived on
read), bad input named."""

from __future__ import annotations

import json

import pytest

from dsa.bench.cli import bench_layer_main as main
from dsa.bench.layer import LayerBenchConfig, attention_pairs, parse_indexer, run, speedup, table


def test_rows_time_the_layers_and_their_parts(tmp_path):
    res = run(LayerBenchConfig(seq_lens=[24], top_k=5, d_model=16, heads=4, kv_heads=1, head_dim=8,
                               indexers=["2x8", "3x4"], device="cpu"))
    assert [(r["L"], r["H_I"], r["d_I"]) for r in res["rows"]] == [(24, 2, 8), (24, 3, 4)]
    for r in res["rows"]:
        assert r["layout"] == "mqa" and r["impl"] == "reference"
        for name in ("dense_math_fwd", "dense_math_fwdbwd", "dsa_fwd", "dsa_fwdbwd", "part_indexer_topk",
                     "part_sparse_fwdbwd", "part_kl_fwdbwd"):
            assert r[name + "_ms"] > 0, name
        assert not any("speedup" in c for c in r), "raw timings only: ratios are derived on read"
        assert speedup(r, "math", "fwd") == pytest.approx(r["dense_math_fwd_ms"] / r["dsa_fwd_ms"])
    assert res["provenance"]["device"].startswith("cpu")
    head, *lines = table(res).splitlines()
    col = head.split().index("speedup_math_fwdbwd")
    r = res["rows"][0]
    assert float(lines[0].split()[col]) == pytest.approx(r["dense_math_fwdbwd_ms"] / r["dsa_fwdbwd_ms"], abs=0.006)


def test_speedup_is_none_where_a_side_was_not_measured():
    assert speedup({"dense_cudnn_fwd_ms": 4.0, "dsa_fwd_ms": 2.0}, "cudnn", "fwd") == 2.0
    assert speedup({"dense_cudnn_fwd_ms": None, "dsa_fwd_ms": 2.0}, "cudnn", "fwd") is None
    assert speedup({"dense_cudnn_fwd_ms": 4.0}, "cudnn", "fwd") is None
    assert speedup({"dense_flash_fwdbwd_ms": 9.0, "dsa_fwdbwd_ms": 3.0}, "flash", "fwdbwd") == 3.0


def test_attention_pairs_count_the_causal_triangle():
    assert attention_pairs(4, None) == 10
    assert attention_pairs(4, 2) == 1 + 2 + 2 + 2
    assert attention_pairs(4, 4) == attention_pairs(4, None)


def test_bad_input_is_named_before_any_work(capsys):
    with pytest.raises(ValueError, match="HEADSxDIM"):
        parse_indexer("64-128")
    with pytest.raises(ValueError, match="top_k"):
        LayerBenchConfig(seq_lens=[16], top_k=17)
    with pytest.raises(ValueError, match="n_heads .* multiple of n_kv_heads"):
        LayerBenchConfig(heads=4, kv_heads=3)
    with pytest.raises(SystemExit):
        main(["--indexers", "4by64"])
    assert "HEADSxDIM" in capsys.readouterr().err


def test_main_writes_its_json(tmp_path):
    out = tmp_path / "b.json"
    main(["--seq-lens", "16", "--top-k", "4", "--d-model", "8", "--heads", "2", "--kv-heads", "1", "--head-dim",
          "4", "--indexers", "2x4", "--device", "cpu", "--out", str(out)])
    assert json.loads(out.read_text())["rows"][0]["L"] == 16
