"""dsa.bench.map on CPU at tiny sizes (seconds): every layout kind timed dense and DSA, raw timings with
provenance, the budget and the FP8 flag; bad input named before any work."""

from __future__ import annotations

import json

import pytest

from dsa.bench.map import LAYOUTS, MapConfig, fp8_available, layout_shape, main, parse_indexer_spec, run


def test_tiny_map_times_dense_and_dsa_per_layout_and_indexer():
    cfg = MapConfig(layouts=["tiny-mqa", "tiny-mla"], seq_lens=[24, 16], indexers=["2x8", "3x4"], top_k=5,
                    d_model=16, reps=2, device="cpu")
    res = run(cfg)
    keys = [(r["layout"], r["L"], r["H_I"]) for r in res["rows"]]
    assert keys == [(lay, l, hi) for lay in ("tiny-mqa", "tiny-mla") for l in (16, 24) for hi in (2, 3)]
    for r in res["rows"]:
        for name in ("dense_math_fwd", "dense_math_fwdbwd", "dsa_fwd", "dsa_fwdbwd"):
            assert r[name + "_ms"] > 0, name
        assert r["impl"] == "reference" and r["indexer_precision"] == "bf16"
    mla = next(r for r in res["rows"] if r["layout"] == "tiny-mla")
    # DSA runs the absorbed form (one latent K/V), the dense layer MLA in MHA mode
    assert (mla["H_kv"], mla["d_qk"], mla["d_v"]) == (1, 40, 32)
    assert (mla["dense_H_kv"], mla["dense_d_qk"], mla["dense_d_v"]) == (4, 24, 16)
    assert res["provenance"]["device"].startswith("cpu") and "git_commit" in res["provenance"]


def test_a_spent_budget_records_the_rows_as_skipped():
    res = run(MapConfig(layouts=["tiny-mqa"], seq_lens=[16], indexers=["2x8"], top_k=4, d_model=16, device="cpu",
                        budget_s=1e-9))
    (row,) = res["rows"]
    assert row["dsa_fwd_ms"] is None and row["dsa_fwd_why"] == "budget"
    assert row["dense_math_fwdbwd_ms"] is None and row["dense_math_fwdbwd_why"] == "budget"


@pytest.mark.parametrize("error, why", [
    (RuntimeError("InductorError: CUDA out of memory. Tried to allocate 128.00 GiB"), "oom"),
    (ValueError("no kernel for this shape"), "ValueError: no kernel for this shape"),
])
def test_a_dense_backend_that_fails_to_build_is_recorded_and_the_run_goes_on(monkeypatch, error, why):
    import dsa.bench.map as M  # noqa: PLC0415

    def failing(*args, **kwargs):
        raise error

    monkeypatch.setattr(M, "_dense_fns", failing)  # as FlexAttention's block mask at 128K (wrapped by inductor)
    res = run(MapConfig(layouts=["tiny-mqa"], seq_lens=[16, 24], indexers=["2x8"], top_k=4, d_model=16, device="cpu"))
    assert len(res["rows"]) == 2
    for row in res["rows"]:
        assert row["dense_math_fwd_ms"] is None and row["dense_math_fwd_why"] == why
        assert row["dsa_fwd_ms"] > 0


def test_flex_is_refused_past_its_int32_offsets_before_building_a_mask(monkeypatch):
    """FlexAttention faults past 2^31 elements per q/k/v (measured at MLA-MHA 128K): the map's builder raises a
    ValueError naming it instead (recorded as that backend's failure), before any block mask is built."""
    import torch  # noqa: PLC0415

    import dsa.bench.layer as BL  # noqa: PLC0415
    import dsa.bench.map as M  # noqa: PLC0415

    cfg = MapConfig(layouts=["tiny-mqa"], seq_lens=[16], indexers=["2x8"], top_k=4, d_model=16, device="cpu")
    dense = M.DenseAttention(M._attention_config(cfg, "tiny-mqa", 16, dense=True))
    x, go = M._inputs(cfg, 16, torch.device("cpu"), torch.float32)
    monkeypatch.setattr(BL, "FLEX_MAX_ELEMENTS", 16)
    with pytest.raises(ValueError, match="flex: .* past 2\\^31"):
        BL._dense_fns(dense, "flex", x, go, cuda=True)


def test_layout_shapes_of_the_real_layouts():
    assert layout_shape("mla128") == dict(H=128, H_kv=1, d_qk=576, d_v=512, dense_H_kv=128, dense_d_qk=192,
                                          dense_d_v=128)
    assert layout_shape("gqa16/2")["H_kv"] == 2 and set(LAYOUTS) >= {"mha16", "gqa16/2", "mqa64", "mla128"}


def test_indexer_specs_and_the_fp8_flag():
    assert parse_indexer_spec("64x128") == (64, 128, "bf16")
    assert parse_indexer_spec("64x128:fp8") == (64, 128, "fp8")
    with pytest.raises(ValueError, match="bf16 or fp8"):
        parse_indexer_spec("64x128:fp4")
    if not fp8_available():
        with pytest.raises(ValueError, match="FP8 indexer is not in this tree"):
            MapConfig(indexers=["64x128:fp8"])


def test_bad_input_is_named_before_any_work(capsys):
    with pytest.raises(ValueError, match="unknown layout"):
        MapConfig(layouts=["mqa65"])
    with pytest.raises(ValueError, match="top_k"):
        MapConfig(seq_lens=[16], top_k=17)
    with pytest.raises(ValueError, match="budget_s"):
        MapConfig(budget_s=-1)
    with pytest.raises(SystemExit) as exc:
        main(["--layouts", "nope"])
    assert exc.value.code == 2 and "error: argument --layouts: invalid choice" in capsys.readouterr().err


def test_main_writes_one_json(tmp_path):
    out = tmp_path / "m.json"
    main(["--layouts", "tiny-mqa", "--seq-lens", "16", "--top-k", "4", "--d-model", "16", "--indexers", "2x8",
          "--reps", "1", "--device", "cpu", "--out", str(out)])
    rec = json.loads(out.read_text())
    assert rec["rows"][0]["L"] == 16 and rec["config"]["layouts"] == ["tiny-mqa"] and "provenance" in rec
