"""dsa.bench.indexer on CPU at a toy size (references only): the record, its provenance, bad input named."""

from __future__ import annotations

import json

import pytest

from dsa.bench.indexer import main


def test_cpu_smoke_run_writes_a_record_with_provenance(tmp_path):
    out = tmp_path / "idx.json"
    assert main(["--cpu", "--seq-lens", "64", "--heads", "4", "--dim", "16", "--top-k", "8", "--recall-len", "64",
                 "--out", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert rec["provenance"]["device"].startswith("cpu") and rec["provenance"]["config"]["heads"] == 4
    assert [(r["L"], r["precision"]) for r in rec["topk"]] == [(64, "bf16"), (64, "fp8")]
    assert rec["matmul"]["fp8_tflops"] is None and rec["device_fp8"] is False  # no FP8 matmul on CPU
    for name in ("random", "structured"):
        assert 0.9 < rec["recall"][name]["mass_ratio"] <= 1.0 + 1e-6
        assert rec["recall"][name]["n_nontrivial"] == 64 - 8  # k = min(top_k, recall_len // 4) = 8
    assert rec["topk_bytes_model"][0]["L"] == 64 and rec["complete"] is True


@pytest.mark.parametrize("argv,msg", [(["--dim", "24"], "power of two"), (["--seq-lens", "16"], "--top-k"),
                                      (["--heads", "0"], "--heads"), (["--hn-tiles", "3x64x4"], "--hn-tiles")])
def test_bad_arguments_exit_2_with_an_error(capsys, argv, msg):
    with pytest.raises(SystemExit) as exc:
        main(["--cpu", *argv])
    assert exc.value.code == 2 and msg in capsys.readouterr().err
