"""dsa.bench.mla on CPU (the reference path at a tiny layout), its FLOP counts and tile specs."""

from __future__ import annotations

import pytest

from dsa.bench.mla import (
    DKV_MODES,
    MLABenchConfig,
    _skip,
    _tile_sets,
    bwd_flops_per_pair,
    dkv_atomic_bytes_per_pair,
    fwd_flops_per_pair,
    main,
    parse_tile,
    run,
)


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


def test_headsum_is_a_strategy_with_its_own_tiles():
    """'headsum' is timed beside 'atomic'; a dkv tile reaches only the headsum rows, a bwd tile every strategy
    but 'inverted'; the bench names the kernels' strategies (checked here: the bench does not import triton)."""
    from dsa.ops.kernels.sparse_attention import DKV_MODES as KERNEL_MODES  # noqa: PLC0415

    assert DKV_MODES == tuple(m for m in KERNEL_MODES if m != "auto")  # the bench times strategies, not the choice
    cfg = MLABenchConfig(dkv=["atomic", "headsum"], tiles=["dkv:16:32:8:0", "bwd:32:64:8:2"])
    assert parse_tile("dkv:16:32:8:0") == {"pass": "dkv", "block_h": 16, "block_k": 32, "num_warps": 8,
                                           "num_stages": None}
    sets = _tile_sets(cfg)
    assert sets == [({}, {}, {}), ({}, {}, {"block_h": 16, "block_k": 32, "num_warps": 8}),
                    ({}, {"block_h": 32, "block_k": 64, "num_warps": 8, "num_stages": 2}, {})]
    timed = [(dkv, i) for i, tiles in enumerate(sets) for dkv in ("atomic", "inverted", "headsum")
             if not _skip(cfg, dkv, 96, tiles)]
    assert timed == [("atomic", 0), ("inverted", 0), ("headsum", 0), ("headsum", 1), ("atomic", 2), ("headsum", 2)]
    assert _skip(MLABenchConfig(inverted_max_len=64), "inverted", 96, ({}, {}, {}))
    with pytest.raises(ValueError, match="dkv"):
        parse_tile("dq:16:32:8:0")


def test_dkv_atomic_bytes_per_pair_at_the_mla_shape():
    """The numbers the kernel docstring gives: 4 head blocks x (576 + 512) fp32 per pair for 'atomic', one
    576-wide row for 'headsum' with the latent as key and value (7.6x fewer), 576 + 512 with v apart."""
    assert dkv_atomic_bytes_per_pair("atomic", 128, 576, 512, 32, True) == 4 * 4 * 1088 == 17408
    assert dkv_atomic_bytes_per_pair("headsum", 128, 576, 512, 8, True) == 2304
    assert dkv_atomic_bytes_per_pair("headsum", 128, 576, 512, 8, False) == 4352
    assert dkv_atomic_bytes_per_pair("atomic", 20, 72, 40, 16, False) == 2 * 112 * 4  # a partial head block
    assert dkv_atomic_bytes_per_pair("inverted", 128, 576, 512, 32, True) == 0
