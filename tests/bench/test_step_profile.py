"""dsa.bench.step_profile on CPU at a tiny size: every variant timed, ratios to the first, bad input named."""

from __future__ import annotations

import json

import pytest

from dsa.bench.cli import profile_main as main
from dsa.bench.step_profile import StepProfileConfig, parse_variant, run


def test_variants_are_timed_with_ratios_and_top_ops():
    cfg = StepProfileConfig(seq_len=24, top_k=5, batch_size=2, d_model=16, n_layers=1, n_heads=2, indexer_heads=2,
                            indexer_dim=8, indexer_rope_dim=4, steps=2, warmup=1, profile_steps=1, device="cpu")
    res = run(cfg, ["dense", "dsa", "dsa:reference"])
    rows = {r["variant"]: r for r in res["variants"]}
    assert rows["dense"]["ratio_to_first"] == 1.0 and rows["dsa"]["attention"] == "dsa"
    assert rows["dsa"]["impl_resolved"] == "reference" and 0 < rows["dsa"]["attention_share"] <= 1
    for r in rows.values():
        assert r["ms_per_step_median"] > 0 and len(r["ms_per_step_all"]) == 2 and r["top_ops"]
        assert r["ratio_to_first"] == pytest.approx(r["ms_per_step_median"] / rows["dense"]["ms_per_step_median"])
    assert res["provenance"]["device"].startswith("cpu")


def test_bad_variants_and_k_are_named(tmp_path, capsys):
    with pytest.raises(ValueError, match="variant"):
        parse_variant("dsa:cuda")
    with pytest.raises(ValueError, match="needs a CUDA device"):  # refused before the dense variant runs
        run(StepProfileConfig(seq_len=8, top_k=2, device="cpu"), ["dense", "dsa:triton"])
    with pytest.raises(ValueError, match="top_k"):
        StepProfileConfig(seq_len=8, top_k=9)
    with pytest.raises(SystemExit):
        main(["--variants", "dense", "sparse"])
    assert "variant must be" in capsys.readouterr().err
    out = tmp_path / "p.json"
    main(["--seq-len", "16", "--top-k", "4", "--batch-size", "1", "--d-model", "16", "--n-layers", "1",
          "--n-heads", "2", "--steps", "1", "--warmup", "0", "--profile-steps", "1", "--device", "cpu",
          "--variants", "dense", "dsa", "--out", str(out)])
    assert [v["variant"] for v in json.loads(out.read_text())["variants"]] == ["dense", "dsa"]
