"""The one legacy reader: records written before TrainConfig.design get the factors the experiments design
today, and benchmark files in the bench's older schema read as the current one."""

from __future__ import annotations

from dataclasses import asdict

import pytest

from dsa.records import data_dir
from dsa.study import bench_tables as B
from dsa.study.legacy import bench_k_rule, bench_record, designed_ratio, run_design, with_design
from dsa.study.runs import recorded_runs
from dsa.train.design import SPARSITY_RATIOS
from dsa.train.experiments import EXPERIMENTS, get_experiment


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_derived_design_matches_the_recorded_one(name):
    """What the legacy reader derives from the fields is what the experiment records (minus what a record
    cannot tell: which experiment and ablation it served)."""
    for c in get_experiment(name, "full"):
        cfg = asdict(c)
        want = {k: v for k, v in cfg.pop("design").items() if k not in ("experiment", "ablation", "level")}
        assert run_design(cfg) == want, c


def test_with_design_fills_a_copy_and_keeps_a_recorded_design():
    rec = {"config": {"attention": "dsa", "recipe": "deepseek", "seq_len": 64, "top_k": 21}}
    out = with_design(rec)
    assert out["config"]["design"] == {"arm": "DSA deepseek", "ratio": 0.33, "k_rule": "0.33·L"}
    assert "design" not in rec["config"]
    own = {"config": {**rec["config"], "design": {"arm": "mine", "ratio": 0.3}}}
    assert with_design(own) is own
    assert designed_ratio(21, 64) == 0.33 and designed_ratio(20, 64) == 0.3125  # off the grid: the raw k/L


@pytest.mark.skipif(not (data_dir() / "gpu" / "exp5_sparsity.jsonl").exists(), reason="no recorded exp5 sweep")
def test_recorded_runs_read_with_their_design():
    recs = recorded_runs("gpu/exp5_sparsity.jsonl")
    dsa = [r for r in recs if r["config"]["attention"] == "dsa"]
    assert dsa and {r["config"]["design"]["ratio"] for r in dsa} <= set(SPARSITY_RATIOS)


def test_old_bench_schema_reads_as_the_current_one():
    old = {"provenance": {"git_commit": "c0ffee0", "date": "2026-11-20", "device": "gpu", "torch": "2.9",
                          "triton": "3.5", "sparse_path": "triton", "timer": "do_bench"},
           "rows": [{"L": 16384, "k": 2048}, {"L": 32768, "k": 4096}, {"L": 32768, "k": 2048}]}
    new = bench_record(old)
    assert new["provenance"]["torch_version"] == "2.9" and new["provenance"]["triton_version"] == "3.5"
    assert new["provenance"]["bench"] == {"sparse_path": "triton", "timer": "do_bench"}
    assert [r["k_rule"] for r in new["rows"]] == ["k=2048=L/8", "k=L/8", "k=2048"]
    assert "k_rule" not in old["rows"][0] and "torch" in old["provenance"]  # the file's dict is left alone
    assert bench_record(new) == new
    assert bench_k_rule(256, 64) == "k=64"


def test_every_recorded_bench_file_loads_with_k_rules():
    results = B.load_bench_results("bench/*.json")
    if not results:
        pytest.skip("no recorded benchmark")
    for res in results:
        assert "torch_version" in res["provenance"] and "sparse_path" in res["provenance"]["bench"]
        assert all(r["k_rule"].startswith("k=") for r in res["rows"])
    df = B.bench_frame(results)
    assert set(B.select_k(df, "L/8").k_rule) <= {"k=L/8", "k=2048=L/8"}
