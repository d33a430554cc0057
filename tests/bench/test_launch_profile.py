"""dsa.bench.launch_profile on CPU at tiny sizes: both layers and passes profiled, time grouped into categories
that add up, the same layers as the map's, bad input named before any work (CLI: error, exit 2)."""

from __future__ import annotations

import json

import pytest

from dsa.bench.launch_profile import OTHER, LaunchProfileConfig, category, main, run


def test_every_layer_and_pass_is_profiled_and_its_categories_add_up():
    res = run(LaunchProfileConfig(layout="tiny-mla", seq_len=40, indexer="2x16", top_k=9, d_model=32, calls=1,
                                  top=5, device="cpu"), log=lambda s: None)
    assert [(r["layer"], r["pass"]) for r in res["rows"]] == [("dense", "fwd"), ("dense", "fwdbwd"),
                                                              ("dsa", "fwd"), ("dsa", "fwdbwd")]
    for r in res["rows"]:
        assert r["kernel_ms"] > 0 and r["time_kind"] == "self CPU time" and len(r["top"]) <= 5
        assert sum(c["ms"] for c in r["categories"].values()) == pytest.approx(r["kernel_ms"])
        assert sum(c["share"] for c in r["categories"].values()) == pytest.approx(1.0)
        assert [t["ms"] for t in r["top"]] == sorted((t["ms"] for t in r["top"]), reverse=True)
    dsa_fwd = res["rows"][2]
    assert "top-k" in dsa_fwd["categories"]  # the reference indexer's selection sorts its scores
    assert res["provenance"]["device"].startswith("cpu")


@pytest.mark.parametrize("name, cat", [
    ("sparse_attn_fwd_kernel", "sparse attention forward"),
    ("sparse_attn_dkv_headsum_kernel", "sparse attention backward"),
    ("sparse_attn_probs_kernel", "indexer loss (KL)"),
    ("radix_threshold_kernel", "top-k"),
    ("idx_scores_hn_kernel", "indexer scores"),
    ("idx_pass_kernel", "indexer scores"),
    ("rotate_quantize_kernel", "indexer FP8 rotation + quantization"),
    ("cudnn_generated_fort_native_sdpa_sm90_knob_7", "dense attention"),
    ("nvjet_tst_128x256_64x4_1x2_h_bz_coopA_NNT", "matmul"),
    ("void at::native::vectorized_elementwise_kernel<4, ...>", OTHER),
])
def test_kernel_names_fall_in_their_categories(name, cat):
    assert category(name) == cat


@pytest.mark.parametrize("kwargs, msg", [
    (dict(layout="mla7"), "unknown layout"),
    (dict(top_k=100, seq_len=64), "top_k"),
    (dict(calls=0), "calls must be a positive int"),
    (dict(dense_backend="math"), "dense_backend must be one of"),
])
def test_bad_input_is_named_before_any_work(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        LaunchProfileConfig(**kwargs)


def test_cli_writes_the_json(tmp_path, capsys):
    out = tmp_path / "p.json"
    assert main(["--layout", "tiny-mqa", "--seq-len", "24", "--top-k", "5", "--indexer", "2x8", "--d-model", "16",
                 "--calls", "1", "--device", "cpu", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert len(res["rows"]) == 4 and "git_commit" in res["provenance"]
    assert "ms per call" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["--seq-len", "0"])
    assert e.value.code == 2


def test_one_layer_alone():
    res = run(LaunchProfileConfig(layout="tiny-mqa", seq_len=24, indexer="2x8", top_k=5, d_model=16, calls=1,
                                  layers=["dsa"], device="cpu"), log=lambda s: None)
    assert [(r["layer"], r["pass"]) for r in res["rows"]] == [("dsa", "fwd"), ("dsa", "fwdbwd")]
    with pytest.raises(ValueError, match="layers must name"):
        LaunchProfileConfig(layers=["sparse"])
