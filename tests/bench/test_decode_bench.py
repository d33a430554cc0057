"""dsa.bench.decode on CPU at tiny sizes: every step timed per row, bytes and ratios derived from the times,
whole requests, the JSON with provenance, bad input named (CLI: error and exit 2)."""

from __future__ import annotations

import json

import pytest

from dsa.bench.decode import LAYOUTS, TINY_LAYOUTS, DecodeBenchConfig, decode_bytes, main, run


def test_rows_time_every_step_and_derive_the_ratios():
    res = run(DecodeBenchConfig(contexts=[40, 23], batches=[2], top_k=8, request_contexts=[17], gen_tokens=3),
              log=lambda s: None)
    rows = [r for r in res["rows"] if r["kind"] == "decode"]
    assert [(r["layout"], r["context"]) for r in rows] == [("mqa", 23), ("mqa", 40), ("mla", 23), ("mla", 40)]
    for r in rows:
        for name in ("dense", "dense_sdpa", "dsa", "dsa_indexer_topk", "dsa_indexer_scores", "dsa_sparse",
                     "dsa_topk", "dsa_topk_split", "dsa_topk_torch", "dsa_topk_torch_exact"):
            assert r[f"{name}_ms"] > 0, name
            assert r[f"{name}_tokens_per_s"] == pytest.approx(2 / (r[f"{name}_ms"] / 1e3))
            assert r[f"{name}_gbps"] == pytest.approx(r[f"{name}_bytes"] / r[f"{name}_ms"] / 1e6)
        assert not any(k.startswith("speedup") for k in r), "raw timings only: ratios are derived on read"
        assert r["impl"] == "reference"
    req = [r for r in res["rows"] if r["kind"] == "request"]
    assert len(req) == 2
    for r in req:
        assert r["request_dsa_ms"] == pytest.approx(r["prefill_dsa_ms"] + r["decode_dsa_ms"])
        assert "speedup_request" not in r
    assert res["provenance"]["device"].startswith("cpu") and res["hbm_gbps"] is None


@pytest.mark.parametrize("fp8", [False, True])
def test_the_top_k_alone_steps_select_what_the_indexer_step_selects(fp8):
    """dsa_topk (ours), dsa_topk_split (ours in two stages), dsa_topk_torch (torch.topk) and dsa_topk_torch_exact
    (our contract by torch.topk) time the top-k over the step's own scores: each returns the positions the
    whole indexer step selects, sorted, at an odd context and k (the kernels' own equality:
    tests/ops/test_kernels.py)."""
    import torch  # noqa: PLC0415

    from dsa.bench.decode import _caches, _inputs, step_fns  # noqa: PLC0415

    gen = torch.Generator().manual_seed(3)
    lay = TINY_LAYOUTS["mqa"]
    caches = _caches(lay, 3, 41, 16, torch.device("cpu"), torch.float32, gen, fp8=fp8)
    x = _inputs(lay, caches, 37, 2, 16, torch.device("cpu"), torch.float32, gen)
    fns = step_fns(x, 11, 0.25)
    want = fns["dsa_indexer_topk"]().view(3, 11).long().sort(-1).values  # the reference ranks by score
    assert torch.equal(fns["dsa_topk"]().long(), want)
    assert torch.equal(fns["dsa_topk_split"]().long(), want)
    assert torch.equal(fns["dsa_topk_torch"](), want)
    assert torch.equal(fns["dsa_topk_torch_exact"]().long(), want)


def test_fp8_indexer_keys_are_timed_and_counted_at_one_byte_and_a_scale():
    """--indexer-dtype fp8: the DSA steps run on e4m3 keys with per-token scales (the CPU holds e4m3 too) and
    their bytes count 1 a value + 4 a token; dense is unchanged."""
    cfg = DecodeBenchConfig(layouts=["mla"], contexts=[37], batches=[3], top_k=8, request_contexts=[19],
                            gen_tokens=2, indexer="4x16", indexer_dtype="fp8")
    res = run(cfg, log=lambda s: None)
    row = next(r for r in res["rows"] if r["kind"] == "decode")
    assert row["indexer_dtype"] == "fp8" and (row["indexer_value_bytes"], row["indexer_scale_bytes"]) == (1, 4)
    assert row["dsa_indexer_topk_bytes"] == 3 * 37 * (16 + 4 + 8)
    assert row["dense_bytes"] == 3 * 37 * TINY_LAYOUTS["mla"].row_values * 2
    assert all(row[f"{n}_ms"] > 0 for n in ("dsa", "dsa_indexer_topk", "dsa_sparse"))
    req = next(r for r in res["rows"] if r["kind"] == "request")
    assert req["indexer_dtype"] == "fp8" and req["prefill_dsa_ms"] > 0 and req["decode_dsa_ms"] > 0


def test_caches_over_the_limit_are_skipped_and_said_so():
    res = run(DecodeBenchConfig(layouts=["mqa"], contexts=[20, 5000], batches=[1], top_k=4, request_contexts=[],
                                max_cache_gib=1e-4), log=lambda s: None)
    by_s = {r["context"]: r for r in res["rows"]}
    assert by_s[5000]["skipped"].startswith("caches over") and "dsa_ms" not in by_s[5000]
    assert by_s[20]["dsa_ms"] > 0


def test_bytes_model():
    mla = LAYOUTS["mla"]
    b = decode_bytes(mla, 131072, 1, 2048, 128)
    assert b["dense"] == 131072 * 576 * 2  # ~151 MB, the figure
    assert b["dsa"] == 131072 * (128 * 2 + 8) + 2048 * 576 * 2
    assert b["dense"] / b["dsa"] > 4
    assert decode_bytes(mla, 1000, 3, 2048, 128)["dsa_sparse"] == 3 * 1000 * 576 * 2  # k capped at S
    f8 = decode_bytes(mla, 131072, 1, 2048, 128, idx_bytes=1, scale_bytes=4)  # DeepSeek's 132-byte FP8 keys
    assert f8["dsa_indexer_topk"] == 131072 * (132 + 8) and f8["dsa"] == f8["dsa_indexer_topk"] + 2048 * 576 * 2
    assert f8["dense"] / f8["dsa"] > 7  # the issue's ~8x (the fp32 score round trip included)


def test_cli_writes_json_with_provenance(tmp_path, capsys):
    out = tmp_path / "d.json"
    main(["--layouts", "mqa", "--contexts", "30", "--batches", "1", "--top-k", "6", "--gen-tokens", "2",
          "--indexer-dtype", "fp8", "--out", str(out)])
    res = json.loads(out.read_text())
    assert "git_commit" in res["provenance"] and res["config"]["top_k"] == 6
    assert res["config"]["indexer_dtype"] == "fp8" and res["rows"][0]["indexer_scale_bytes"] == 4
    assert any(r["kind"] == "request" for r in res["rows"])
    assert str(out) in capsys.readouterr().out


@pytest.mark.parametrize("argv, msg", [(["--layouts", "gqa"], "layouts"), (["--top-k", "500"], "top_k"),
                                       (["--indexer", "4by16"], "HEADSxDIM"), (["--batches", "0"], "batches"),
                                       (["--indexer-dtype", "fp16"], "indexer-dtype"),
                                       (["--indexer-dtype", "fp8", "--indexer", "4x12"], "power-of-two")])
def test_bad_arguments_exit_2_naming_them(argv, msg, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and msg in capsys.readouterr().err
