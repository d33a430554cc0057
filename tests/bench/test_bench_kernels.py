"""dsa.bench.kernels on CPU at a tiny size: raw timings with dsa.provenance's schema and the k rule as
designed, called as a function; the benchmark never imports the study tier."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from dsa.bench.kernels import KernelBenchConfig, bench, k_rules


def test_k_rules_record_the_rule_as_asked():
    assert k_rules(256, [64, 0]) == {64: "k=64", 32: "k=L/8"}
    assert k_rules(16384, [2048, 0]) == {2048: "k=2048=L/8"}  # one k, timed once, under both rules
    assert k_rules(16, [64, 0]) == {2: "k=L/8"}  # a k above L is left out


def test_bench_writes_raw_timings_with_the_project_provenance(tmp_path):
    out = tmp_path / "b.json"
    cfg = KernelBenchConfig(seq_lens=[32], top_k=[8, 0], kv_heads=[1], heads=2, head_dim=8, indexer_heads=1,
                            indexer_dim=8, cpu=True, masked_max_len=0, gather_max_len=0)
    res = bench(cfg, out)
    assert json.loads(out.read_text())["rows"] == json.loads(json.dumps(res["rows"], default=str))
    prov = res["provenance"]
    assert {"git_commit", "git_dirty", "torch_version", "device", "date"} <= set(prov)
    assert prov["bench"]["sparse_path"] == "reference"
    assert [(r["k"], r["k_rule"]) for r in res["rows"]] == [(8, "k=8"), (4, "k=L/8")]
    for r in res["rows"]:
        assert r["flash_fwd_ms"] > 0 and r["dsa_fwd_ms"] > 0
        assert not any(c.startswith("speedup") or c.endswith("_speedup") for c in r)  # derived on read only
    with pytest.raises(TypeError, match="nope"):
        KernelBenchConfig(nope=1)


def test_the_bench_never_imports_the_study():
    code = "import sys, dsa.bench.kernels; print(sorted(m for m in sys.modules if m.startswith('dsa.study')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
