"""dsa.bench.mla on CPU (the reference path at a tiny layout), its FLOP counts and tile specs."""

from __future__ import annotations

import pytest

from dsa.bench.mla import MLABenchConfig, bwd_flops_per_pair, fwd_flops_per_pair, main, parse_tile, run


def test_flops_per_pair_at_the_mla_shape():
    assert fwd_flops_per_pair(128, 576, 512) == 2 * 128 * 1088
    # S, dK, dQ over d_qk; dP, dV over d_v: 2.5x the forward at d_qk = d_v
    assert bwd_flops_per_pair(16, 128, 128) == 2.5 * fwd_flops_per_pair(16, 128, 128)


def test_cpu_run_times_the_reference():
    res = run(MLABenchConfig(seq_lens=[40], layouts=["tiny"], top_k=8, device="cpu"))
    (row,) = res["rows"]
    assert row["impl"] == "reference" and row["fwd_ms"] > 0 and row["bwd_ms"] > 0
    assert row["pairs"] == 8 * 9 / 2 + 32 * 8 and "git_commit" in res["provenance"]


def test_tiles_and_bad_input():
    assert parse_tile("fwd:64:32:8:0") == {"pass": "fwd", "block_h": 64, "block_k": 32, "num_warps": 8,
                                           "num_stages": None}
    with pytest.raises(ValueError, match="fwd\\|bwd"):
        parse_tile("fwd:64:32")
    with pytest.raises(ValueError, match="unknown layout"):
        MLABenchConfig(layouts=["mla7"])
    with pytest.raises(ValueError, match="dkv"):
        MLABenchConfig(dkv=["sorted"])
    with pytest.raises(SystemExit):
        main(["--top-k", "0"])
