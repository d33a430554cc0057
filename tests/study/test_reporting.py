"""The notebooks' reporting helpers on hand-made records: JSON-lines records with provenance, run tables,
mean/CI tables and the exp4 verdicts (dsa.study.verdicts), the benchmark merge and target evaluation
(dsa.study.bench_tables), per-query k helpers (dsa.study.analysis) and the config filters of dsa.study.runs."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pandas as pd
import pytest
import torch

from dsa.records import describe_provenance, load_jsonl_records, read_jsonl, summarize_provenance
from dsa.study import bench_tables as B
from dsa.study import runs as R
from dsa.study import verdicts as V
from dsa.study.analysis import chosen_k, chosen_k_counts, fixed_mean_k, k_policy_override
from dsa.study.legacy import bench_k_rule, bench_record

PROV = {"git_commit": "abcdef1234567", "git_dirty": False, "device": "NVIDIA H100 80GB HBM3",
        "date": "2026-11-23T10:00:00+00:00", "torch_version": "2.11.0"}


def run_record(variant: str, seq_len: int, seed: int, loss: float, acc: float, t: float,
               causal_loss: float | None = None, steps: int = 1000, k_policy: str = "fixed",
               top_k: int | None = None, k_mass: float = 0.9, prov: dict | None = None) -> dict:
    """A record shaped like dsa.train.trainer's, for one of exp4's variants."""
    att = "dense" if variant == "dense" else "dsa"
    recipe = {"dense": "deepseek", "leaky": "scratch", "scratch": "scratch", "deepseek": "deepseek"}[variant]
    cfg = {"attention": att, "recipe": recipe, "seq_len": seq_len, "top_k": top_k or seq_len // 2, "seed": seed,
           "data_seed": 0, "steps": steps, "leak_future": variant == "leaky", "k_policy": k_policy,
           "k_mass": k_mass}
    final = {"val_loss": loss, "val_acc": acc, "val_ppl": math.exp(loss), "time_per_step_s": t,
             "time_per_step_by_phase_s": {"sparse": t} if att == "dsa" else {"dense": t}}
    if causal_loss is not None:
        final.update(val_loss_causal_eval=causal_loss, val_acc_causal_eval=0.1)
    hist = [{"iter": 0, "lm_step": 0, "phase": "dense", "val_loss": 7.6, "val_acc": 0.02},
            {"iter": steps, "lm_step": steps, "phase": "sparse" if att == "dsa" else "dense", **final}]
    return {"name": f"{variant}-L{seq_len}-s{seed}", "config": cfg, "final": final, "history": hist,
            "provenance": dict(prov or PROV), "wall_time_s": 10.0}


def exp4_records(leak_loss: float = 0.4, dsa_delta: float = 0.0, dsa_time: float = 0.05,
                 lens=(64, 128), seeds=(0, 1, 2)) -> list[dict]:
    recs = []
    rng = np.random.default_rng(0)
    for l in lens:
        for s in seeds:
            base = 4.2 + 0.02 * rng.standard_normal()
            recs.append(run_record("dense", l, s, base, 0.21, 0.02))
            recs.append(run_record("leaky", l, s, leak_loss + 0.01 * s, 0.93, 0.048, causal_loss=7.3))
            recs.append(run_record("scratch", l, s, base + dsa_delta + 0.01, 0.20, dsa_time))
            recs.append(run_record("deepseek", l, s, base + dsa_delta - 0.002 * (s - 1), 0.21, dsa_time))
    return recs


# ------------------------------------------------------------------------------------------- records
def test_jsonl_records_need_provenance_and_skip_a_torn_last_line(tmp_path, capsys, monkeypatch):
    log = tmp_path / "log.jsonl"
    monkeypatch.setenv("DSA_RECORDS_LOG", str(log))
    p = tmp_path / "gpu" / "x.jsonl"
    p.parent.mkdir()
    recs = exp4_records(lens=(64,), seeds=(0,))
    p.write_text("".join(json.dumps(r) + "\n" for r in recs) + '{"name": "torn", "conf')
    got = load_jsonl_records("gpu/*.jsonl", root=tmp_path)
    assert [r["name"] for r in got] == [r["name"] for r in recs]
    out = capsys.readouterr().out
    assert "torn last line" in out and "(4 runs)" in out and "commit abcdef1" in out
    logged = [json.loads(x) for x in log.read_text().splitlines()]
    assert logged[0]["n_records"] == 4 and logged[0]["provenance"]["device"] == PROV["device"]

    bad = tmp_path / "gpu" / "y.jsonl"
    rec = dict(recs[0])
    rec["provenance"] = {"device": "x"}
    bad.write_text(json.dumps(rec) + "\n" + json.dumps(recs[1]) + "\n")
    with pytest.raises(ValueError, match="lacks provenance field"):
        read_jsonl(bad)
    bad.write_text("not json\n" + json.dumps(recs[1]) + "\n")
    with pytest.raises(ValueError, match="y.jsonl:1"):
        read_jsonl(bad)
    assert load_jsonl_records("nothing/*.jsonl", root=tmp_path) == []
    with pytest.raises(FileNotFoundError):
        load_jsonl_records("nothing/*.jsonl", root=tmp_path, required=True)


def test_provenance_texts():
    assert "torch 2.11.0" in describe_provenance({**PROV})
    old_bench = {"provenance": {k: v for k, v in PROV.items() if k != "torch_version"} | {"torch": "2.9.1"}}
    assert "torch 2.9.1" in describe_provenance(bench_record(old_bench)["provenance"])  # the one legacy reader
    other = {**PROV, "git_commit": "1111111aaaa", "git_dirty": True}
    s = summarize_provenance([PROV, PROV, other])
    assert "commit abcdef1" in s and "(2 runs)" in s and "commit 1111111+dirty" in s and "(1 run)" in s


# ---------------------------------------------------------------------------------------------- runs
def test_parse_and_valid_list():
    assert R.parse_list("64, 128") == [64, 128]
    assert R.parse_list("  ") is None
    assert R.parse_list("0.25,0.5", float) == [0.25, 0.5]
    with pytest.raises(ValueError, match="'x'"):
        R.parse_list("64,x")
    assert R.valid_list("64,128", int, [64, 128, 256])
    assert not R.valid_list("100", int, [64, 128, 256])
    assert not R.valid_list("64,abc", int)
    assert R.valid_list("", int, [64])
    assert not R.valid_list("-1", int, minimum=0)
    assert R.valid_list("0.33", float, [0.25, 0.33])


def test_fresh_run_rules_order_overrides_and_messages():
    from dsa.study.notebook_params import NotebookParameterError, between, validate_params

    alpha = between(0, 0.5)
    rules = R.fresh_run_rules("exp4_reproduce", filters={"fresh_seq_lens": between(0, None)}, extra={"alpha": alpha})
    assert list(rules) == ["device", "fresh_size", "fresh_seq_lens", "fresh_seeds", "fresh_steps",
                           "fresh_time_budget_s", "alpha", "confidence"]
    assert rules["alpha"] is alpha
    mine = between(0, None)
    over = R.fresh_run_rules("exp3_adaptive", filters={"fresh_seeds": mine}, time_budget=False)
    assert over["fresh_seeds"] is mine and list(over) == ["device", "fresh_size", "fresh_seeds", "fresh_steps",
                                                          "confidence"]
    declared = {"device": str, "fresh_size": str, "fresh_seeds": str, "fresh_steps": int,
                "fresh_time_budget_s": float, "confidence": float}
    good = {"device": "cpu", "fresh_size": "small", "fresh_seeds": "0,1", "fresh_steps": 0,
            "fresh_time_budget_s": 0.0, "confidence": 0.95}
    rules = R.fresh_run_rules("exp4_reproduce")
    assert vars(validate_params(declared, good, rules)) == good
    assert vars(validate_params(declared, {**good, "fresh_size": "full", "fresh_seeds": "2"}, rules))
    for bad, match in ((dict(device="tpu"), "'device'"), (dict(fresh_size="medium", fresh_seeds="9"), "'fresh_size'"),
                       (dict(fresh_seeds="2"), "'fresh_seeds' = '2' is invalid: must be a comma-separated subset of "
                                               r"the experiment size's seeds \(small: 0,1; full: 0,1,2\)"),
                       (dict(fresh_steps=-1), "'fresh_steps'"),
                       (dict(fresh_time_budget_s=-1.0), "'fresh_time_budget_s'"),
                       (dict(confidence=1.0), r"'confidence' = 1.0 is invalid: must be in \[0.5, 1\)")):
        with pytest.raises(NotebookParameterError, match=match):
            validate_params(declared, {**good, **bad}, rules)


def test_run_sources_labels_and_provenance():
    fresh = exp4_records(lens=(64,), seeds=(0,))
    for r in fresh[:2]:
        r["config"]["steps"] = 150
    recorded = exp4_records(lens=(64,), seeds=(0, 1))
    src = R.run_sources(fresh, recorded, device_type="cpu", size="small", fresh_provenance="fresh run on cpu",
                        recorded_what="exp4 sweep")
    assert [(label, prov) for label, _, prov in src] == [
        ("fresh run (cpu, small size, 150/1000 steps)", "fresh run on cpu"),
        ("recorded exp4 sweep (1000 steps)", summarize_provenance([PROV] * 8))]
    assert src[0][1] is fresh and src[1][1] is recorded  # the lists given, not copies
    assert R.recorded_source_label(recorded, "issue 2", "H100") == "recorded issue 2 (H100, 1000 steps)"
    assert R.fresh_source_label(fresh, "cuda", "full") == "fresh run (cuda, full size, 150/1000 steps)"
    # no fresh runs (None) and no recorded runs ([]) make no source; an empty fresh list still does
    only_rec = R.run_sources(None, recorded, device_type="cpu", size="small", fresh_provenance="x", recorded_what="w")
    assert [label for label, _, _ in only_rec] == ["recorded w (1000 steps)"]
    assert R.run_sources(None, [], device_type="cpu", size="small", fresh_provenance="x", recorded_what="w") == []
    assert len(R.run_sources([], [], device_type="cpu", size="small", fresh_provenance="x", recorded_what="w")) == 1


def test_figure_saver_saves_only_when_enabled(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dsa.study.figures import figure_saver

    monkeypatch.setenv("DSA_FIGURES_DIR", str(tmp_path))
    fig = plt.figure()
    try:
        assert figure_saver(False)(fig, "off", "src") is None and not (tmp_path / "off.png").exists()
        assert figure_saver(True)(fig, "on", "src") is None and (tmp_path / "on.png").exists()
    finally:
        plt.close(fig)


def test_select_configs_filters_and_steps():
    from dsa.train.experiments import get_experiment

    cs = get_experiment("exp5_sparsity", "small")
    sel = R.select_configs(cs, seq_lens=[64], seeds=[1], ratios=[0.25, 0.9], steps=12)
    assert {c.seq_len for c in sel} == {64} and {c.seed for c in sel} == {1}
    assert sorted(c.attention for c in sel) == ["dense", "dsa", "dsa"]
    assert sorted(c.top_k for c in sel if c.attention == "dsa") == [16, 58]
    assert all(c.steps == 12 for c in sel)
    no_dense = R.select_configs(cs, seq_lens=[64], seeds=[1], ratios=[0.25], keep_dense=False)
    assert [c.attention for c in no_dense] == ["dsa"]
    lv = R.experiment_levels("exp5_sparsity", "small")
    assert lv["seq_lens"] == [64, 128] and lv["seeds"] == [0, 1, 2] and 0.33 in lv["ratios"]


def test_runs_table_and_arm_labels():
    recs = exp4_records(lens=(64,), seeds=(0,))
    recs.append(run_record("deepseek", 128, 0, 4.0, 0.2, 0.05, k_policy="mass", top_k=96, k_mass=0.8))
    df = R.runs_table(recs, "src")
    assert set(df.source) == {"src"}
    assert list(df.variant[:4]) == ["dense", "DSA scratch (leaky)", "DSA scratch", "DSA deepseek"]
    assert list(df.arm) == ["dense", "fixed k=50%", "fixed k=50%", "fixed k=50%", "mass 0.8 (k≤96)"]
    assert df.sparse_time_per_step_s.tolist() == pytest.approx([0.02, 0.048, 0.05, 0.05, 0.05])
    c = R.curves_table(recs, "src")
    assert len(c) == 2 * len(recs) and set(c.arm) >= {"dense", "mass 0.8 (k≤96)"}


# ------------------------------------------------------------------------------------------ verdicts
def test_seeds_formula():
    # the seeds' table: 7.15 vs 1.78 reported as "302% better"
    assert V.seeds_percent_better(7.15, 1.78) == pytest.approx(3.02, abs=0.005)


def test_summary_table_means_and_intervals():
    df = R.runs_table(exp4_records(), "src")
    s = V.summary_table(df)
    row = s[(s.variant == "DSA scratch (leaky)") & (s.metric == "val_loss") & (s.seq_len == 64)].iloc[0]
    assert row["n"] == 3 and row["mean"] == pytest.approx(0.41)
    assert row["ci_low"] < 0.41 < row["ci_high"]
    assert s[(s.variant == "dense") & (s.metric == "val_loss_causal_eval")].empty  # only the leaky runs have it
    wide = V.format_summary(s)
    cell = wide[(wide.variant == "DSA scratch (leaky)") & (wide.seq_len == 64)]["val loss (nats/token)"].iloc[0]
    assert cell.startswith("0.410 ± ") and cell.endswith("(n=3)")
    assert V.format_mean_ci(1.0, float("nan"), 1) == "1.000 (n=1, no CI)"
    assert V.format_mean_ci(float("nan"), 0.1, 0) == "n/a"


def test_intervals_never_cross_a_physical_bound():
    # the '422.0 ± 4779.8' ms: a time interval is clipped at 0, an accuracy at 100%
    assert V.format_mean_ci(0.422, 4.7798, 2, 1, 1e3, bounds=V.metric_bounds("sparse_time_per_step_s")) == \
        "422.0 [0.0, 5201.8] (n=2, CI clipped at 0)"
    assert V.format_mean_ci(0.95, 0.2, 2, 1, 100.0, bounds=V.metric_bounds("val_acc")).startswith("95.0 [75.0, 100.0]")
    assert V.format_mean_ci(0.5, 0.1, 3, 1, 100.0, bounds=V.metric_bounds("val_acc")) == "50.0 ± 10.0 (n=3)"
    df = pd.DataFrame({"variant": ["a", "a", "b", "b"], "seq_len": 64, "seed": [0, 1, 0, 1],
                       "sparse_time_per_step_s": [0.01, 0.9, 0.02, 0.021], "val_acc": [0.99, 0.5, 0.3, 0.31]})
    t = V.format_summary(V.summary_table(df, metrics=("sparse_time_per_step_s", "val_acc"), by=("seq_len",)),
                         by=("seq_len",))
    for text in t.drop(columns=["seq_len", "variant"]).to_numpy().ravel():
        nums = [float(x) for x in re.findall(r"-?\d+\.\d+", text.split("(n=")[0])]
        assert min(nums) >= 0 and "nan" not in text.lower(), text
        if "[" in text:
            assert "clipped" in text


def test_verdicts_refute_the_seeds_claims_when_only_the_leak_wins():
    df = R.runs_table(exp4_records(), "H100")
    v = V.exp4_verdicts(df).set_index("claim")
    assert v.loc[V.CLAIMS["loss"][0], "verdict"] == "refuted"
    assert "leaky" in v.loc[V.CLAIMS["loss"][0], "evidence"]
    assert "causal guard on at eval 7.300" in v.loc[V.CLAIMS["loss"][0], "evidence"]
    assert v.loc[V.CLAIMS["accuracy"][0], "verdict"] == "refuted"
    assert v.loc[V.CLAIMS["speed"][0], "verdict"] == "refuted"
    assert "2.5x slower" in v.loc[V.CLAIMS["speed"][0], "evidence"]  # 20 ms vs 50 ms
    assert v.loc[V.CLAIMS["parity"][0], "verdict"] == "supported"


def test_verdicts_follow_the_data():
    # a causal DSA that really is 20% better and 1.5x faster: the claims are supported
    df = R.runs_table(exp4_records(dsa_delta=-0.85, dsa_time=0.0133), "good")
    v = V.exp4_verdicts(df).set_index("claim")
    assert v.loc[V.CLAIMS["loss"][0], "verdict"] == "supported"
    assert v.loc[V.CLAIMS["speed"][0], "verdict"] == "supported"
    # 20% better is not "within 5%": parity holds in the "no worse" sense only
    assert "better in places" in v.loc[V.CLAIMS["parity"][0], "evidence"]
    # a leaky variant that gains nothing (too little training): not reproduced, not refuted
    df = R.runs_table(exp4_records(leak_loss=4.2), "short")
    v = V.exp4_verdicts(df).set_index("claim")
    assert v.loc[V.CLAIMS["loss"][0], "verdict"] == "not reproduced"
    # causal DSA 10% worse: parity refuted
    df = R.runs_table(exp4_records(dsa_delta=0.45), "worse")
    assert V.parity_verdict(df, "worse").verdict == "refuted"
    # no sparse runs at all
    only_dense = df[df.variant == "dense"]
    assert V.loss_verdict(only_dense, "x").verdict == "no data"
    assert V.speed_verdict(only_dense, "x").verdict == "no data"


def test_leak_table():
    t = V.leak_table(R.runs_table(exp4_records(), "src"))
    assert list(t.seq_len) == [64, 128]
    assert t["leaky, causal guard on at eval"].tolist() == pytest.approx([7.3, 7.3])
    assert (t["seeds' '% better' (leaky)"] > 5).all()


# --------------------------------------------------------------------------------------------- bench
def bench_result(date: str, lens=(1024, 2048), speed=0.1, flash=1.0, device="NVIDIA H100 80GB HBM3",
                 flex_factor=1.0) -> dict:
    rows = []
    for l in lens:
        for hkv in (16, 2):
            for k in sorted({2048, l // 8}):
                if k > l:
                    continue
                r = {"L": l, "k": k, "H": 16, "H_kv": hkv, "d": 128, "H_I": 4, "d_I": 64, "dtype": "bfloat16",
                     "flash_fwd_ms": flash * l / 1024, "flash_fwdbwd_ms": 3.5 * flash * l / 1024,
                     "flash_fwd_tflops": 300.0, "sparse_fwd_tflops": 30.0,
                     "sparse_fwd_ms": B.sparse_flops(l, k, 16, 128) / 30.0 / 1e9,  # 30 TFLOP/s
                     "dsa_fwd_ms": 2.0, "dsa_fwdbwd_ms": 3.5 * flash * l / 1024 / speed,
                     "torch_topk_ms": 1.0, "topk_fast_ms": 4.0, "scores_plus_torch_topk_ms": 3.0,
                     "radix_topk_ms": 0.5, "radix_speedup": 2.0, "radix_only_ms": 0.8,
                     "flex_fwd_ms": flex_factor * flash * l / 1024, "gather_fwd": None, "gather_fwd_why": "oom"}
                r["speedup_fwdbwd"] = r["flash_fwdbwd_ms"] / r["dsa_fwdbwd_ms"]
                r["topk_speedup"] = r["torch_topk_ms"] / r["topk_fast_ms"]
                r["sparse_vs_flash_tflops"] = r["sparse_fwd_tflops"] / r["flash_fwd_tflops"]
                rows.append(r)
    return {"provenance": {"git_commit": "c0ffee0", "device": device, "date": date, "torch": "2.11"},
            "config": {}, "rows": rows, "_path": f"bench-{date}.json"}


def test_bench_frame_merges_files_latest_wins():
    old = bench_result("2026-11-20", lens=(1024, 2048), flash=9.0)
    new = bench_result("2026-11-23", lens=(2048, 32768), flash=1.0)
    df = B.bench_frame([new, old])
    assert sorted(df.L.unique()) == [1024, 2048, 32768]
    r = df[(df.L == 2048) & (df.H_kv == 2) & (df.k == 256)].iloc[0]
    assert r.flash_fwd_ms == pytest.approx(2.0) and r.superseded == 1 and r.date.startswith("2026-11-23")
    assert set(df.kind) == {"MHA (H_kv=16)", "GQA (H=16, H_kv=2)"}
    assert set(df[df.L == 32768].k_rule) == {"k=2048", "k=L/8"}
    assert bench_k_rule(16384, 2048) == "k=2048=L/8"
    assert len(B.select_k(df, "L/8")) == 6 and set(B.select_k(df, "2048").k) == {2048}
    lt = B.long_times(df)
    assert {"forward", "forward + backward", "selection (no grad)"} <= set(lt["pass"])
    assert not (lt.method_key == "gather").any()  # not measured (oom) -> no row
    sk = B.skipped(df)
    assert set(sk.why) == {"oom"} and set(sk.measurement) == {"gather_fwd"}


def test_bench_frame_merges_a_selection_only_file_into_older_rows():
    """A newer file with the selection columns only keeps the older file's attention columns of the same
    configuration, and its own selection numbers win."""
    full = bench_result("2026-11-20", lens=(32768,))
    sel = {"provenance": {"git_commit": "beef000", "device": full["provenance"]["device"], "date": "2026-11-23"},
           "config": {}, "_path": "sel.json",
           "rows": [{k: r[k] for k in (*B.KEY[1:],)} | {"torch_topk_ms": 14.0, "radix_topk_ms": 7.0,
                                                          "radix_speedup": 2.0, "chunked_scores_plus_radix_ms": 1.5,
                                                          "radix_only_ms": 9.0}
                    for r in full["rows"] if r["H_kv"] == 16]}
    df = B.bench_frame([full, sel])
    r = df[(df.H_kv == 16) & (df.k == 2048)].iloc[0]
    assert r.flash_fwd_ms == pytest.approx(32.0) and r.torch_topk_ms == 14.0 and r.radix_speedup == 2.0
    assert r.superseded == 1 and "sel.json" in r.files and r.commit == "beef000"
    assert df[df.H_kv == 2].torch_topk_ms.eq(1.0).all()
    t = B.evaluate_targets(df).set_index("target")
    assert t.loc[B.TARGETS[4].name, "best"] == pytest.approx(2.0)  # 3.0 ms / min(4.0, 1.5) ms


def test_selection_text_reads_the_kernel_path_and_the_agreement():
    """The selection paragraph gives the speed-up ranges of our top-k and of the radix select alone, the
    number of row reads that bounds the kernel (two when the sampled bracket served the rows, five when the
    radix passes did), and says when a kernel selected different scores from torch.topk."""
    base = {"device": "NVIDIA H100 80GB HBM3", "H": 16, "H_kv": 16, "d": 128, "H_I": 4, "d_I": 64, "dtype": "bf16"}
    rows = [base | {"L": l, "k": 2048, "torch_topk_ms": 0.5 * l / 1024, "radix_topk_ms": 0.05 * l / 1024,
                    "radix_only_ms": 0.3 * l / 1024, "radix_same_scores": True, "radix_only_same_scores": l != 65536,
                    "radix_sampled_share": 0.99}
            for l in (8192, 65536)]
    df = pd.DataFrame(rows)
    df["k_rule"] = [bench_k_rule(r["L"], r["k"]) for r in rows]
    text = B.selection_text(df)
    assert "k=2048: 10.0x at L = 8192..65536" in text
    assert "radix select alone (no sample): k=2048: 1.7x" in text
    assert "served 99% of its rows" in text and "read twice" in text
    # 3.2 ms at 64K on an H100 is ~1.2 reads of the 8.6 GB triangle: within two reads -> memory-bound
    assert "memory bounds it" in text
    df["radix_reads_per_row"] = 1  # the code that keeps the candidates aside reads each row once
    df["torch_topk_banded_ms"] = df.torch_topk_ms / 2  # torch.topk over the causal prefixes only
    banded = B.selection_text(df)
    assert "read once (plus its sample and candidates)" in banded
    assert "Ours against torch.topk over each band of 2048 rows' causal prefix" in banded and ": k=2048: 5.0x" in banded
    df = df.drop(columns=["radix_reads_per_row", "torch_topk_banded_ms"])
    assert ("Ours selected the same scores" in text
            and "alone selected different scores from torch.topk in 1 row" in text)
    df["radix_sampled_share"] = 0.2
    df["radix_topk_ms"] = df.radix_only_ms * 5
    text = B.selection_text(df)
    assert "up to five times" in text and "not memory, bounds it" in text
    only = B.selection_text(df.drop(columns=["radix_topk_ms", "radix_same_scores"]))
    assert only.startswith("NVIDIA H100 80GB HBM3: the radix select alone (no sample; the sampled bracket was not")
    assert "Ours" not in only and "1.7x at L = 8192..65536" in only
    assert B.selection_text(df.drop(columns=["radix_topk_ms", "radix_only_ms"])) == ""


def test_bench_frame_reads_a_pre_sampling_radix_column_as_the_radix_select_alone():
    """Files from before the sampled bracket timed the radix select alone under ``radix_topk``: their
    numbers land in the ``radix_only`` columns, a newer file's ``radix_topk`` keeps its meaning."""
    full = bench_result("2026-11-20", lens=(32768,))
    legacy = full | {"rows": [{c: v for c, v in r.items() if not c.startswith("radix")}
                              | {"radix_topk_ms": 7.0, "radix_same_scores": True} for r in full["rows"]]}
    df = B.bench_frame([legacy])
    r = df.iloc[0]
    assert r.radix_only_ms == 7.0 and r.radix_only_same_scores and "radix_topk_ms" not in df.columns
    assert r.radix_only_speedup == pytest.approx(1.0 / 7.0)
    new = bench_result("2026-11-23", lens=(32768,))
    new["rows"] = [r | {"radix_topk_ms": 0.25, "radix_only_ms": 0.5} for r in new["rows"]]
    r = B.bench_frame([legacy, new]).iloc[0]
    assert r.radix_topk_ms == 0.25 and r.radix_only_ms == 0.5 and r.radix_speedup == pytest.approx(4.0)


def test_bench_frame_newest_word_on_a_measurement_wins_and_ratios_are_rederived():
    """A newer file that could not take a measurement (oom) drops the older time of it, a newer time drops
    an older 'oom', and ratios come from the merged numbers, never from a file whose inputs were replaced."""
    key = {"L": 32768, "k": 2048, "H": 16, "H_kv": 16, "d": 128, "H_I": 4, "d_I": 64, "dtype": "bfloat16"}
    dev = "NVIDIA H100 80GB HBM3"
    old = {"provenance": {"device": dev, "date": "2026-11-20"}, "_path": "old.json",
           "rows": [{**key, "torch_topk_ms": 10.0, "topk_fast_ms": 4.0, "topk_speedup": 2.5,
                     "gather_fwd": None, "gather_fwd_why": "oom"}]}
    new = {"provenance": {"device": dev, "date": "2026-11-23"}, "_path": "new.json",
           "rows": [{**key, "torch_topk": None, "torch_topk_why": "oom", "topk_fast_ms": 1.0,
                     "gather_fwd_ms": 7.0}]}
    r = B.bench_frame([old, new]).iloc[0]
    assert pd.isna(r.torch_topk_ms) and r.torch_topk_why == "oom" and r.topk_fast_ms == 1.0
    assert "topk_speedup" not in r.index or pd.isna(r.topk_speedup), "a ratio outlived its inputs"
    assert r.gather_fwd_ms == 7.0 and pd.isna(r.gather_fwd_why)
    assert set(B.skipped(B.bench_frame([old, new])).measurement) == {"torch_topk"}
    new["rows"][0].update(torch_topk_ms=8.0, torch_topk_why=None, torch_topk=8.0)
    r = B.bench_frame([old, new]).iloc[0]
    assert r.topk_speedup == pytest.approx(8.0)


def test_targets_missed_met_and_not_measured():
    slow = B.bench_frame([bench_result("2026-11-23", lens=(4096, 8192, 16384), speed=0.3)])
    t = slow.pipe(B.evaluate_targets).set_index("target")
    names = [x.name for x in B.TARGETS]
    assert t.loc[names[0], "met"] == "not measured" and "largest L measured: 16384" in t.loc[names[0], "measured"]
    assert t.loc[names[2], "met"] == "no" and t.loc[names[2], "measured"].startswith("never up to L=16384")
    assert t.loc[names[3], "met"] == "no" and t.loc[names[3], "best"] == pytest.approx(2.0)
    assert t.loc[names[4], "best"] == pytest.approx(0.75)
    assert t.loc[names[5], "best"] == pytest.approx(0.1)

    fast = B.bench_frame([bench_result("2026-11-23", lens=(4096, 8192, 32768, 65536), speed=9.0)])
    t = B.evaluate_targets(fast).set_index("target")
    assert t.loc[names[0], "met"] == "yes" and t.loc[names[1], "met"] == "yes"
    assert t.loc[names[2], "met"] == "yes" and t.loc[names[2], "best"] == 4096
    # break-even only beyond 8K: missed
    late = B.bench_frame([bench_result("2026-11-23", lens=(4096, 8192))])
    late.loc[late.L == 8192, "speedup_fwdbwd"] = 1.2
    late2 = B.bench_frame([bench_result("2026-11-23", lens=(16384,))])
    late2["speedup_fwdbwd"] = 1.5
    t = B.evaluate_targets(pd.concat([late[late.L == 4096], late2])).set_index("target")
    assert t.loc[names[2], "met"] == "no" and t.loc[names[2], "best"] == 16384


def test_gather_roofline_bytes_and_needed_bandwidth():
    res = bench_result("2026-11-23", lens=(32768,))
    for r in res["rows"]:
        r["sparse_fwdbwd_ms"], r["sparse_fwd_ms"] = 100.0, 1.0
    roof = B.gather_roofline(B.bench_frame([res])).set_index(["kind", "k"])
    gqa = roof.loc[("GQA (H=16, H_kv=2)", 2048)]
    slots = (32768 * 2048 - 2048 * 2047 / 2) * 2  # causal pairs x 2 KV heads
    assert gqa["G"] == 8
    assert gqa["fwd GB"] == pytest.approx(slots * 2 * 128 * 2 / 1e9)  # K and V rows, bf16
    assert gqa["fwd+bwd GB"] == pytest.approx(slots * 128 * (4 * 2 + 8) / 1e9)  # + dK, dV float32 atomics
    assert gqa["fwd TB/s reached"] == pytest.approx(gqa["fwd GB"] / 1.0)  # GB per ms = TB/s
    # a 4x target at 32K: the layer gets a quarter of flash's fwd+bwd time (3.5 * 32 ms)
    assert gqa["TB/s needed for target"] == pytest.approx(gqa["fwd+bwd GB"] / (3.5 * 32 / 4))
    assert gqa["HBM peak TB/s"] == 3.35
    mha = roof.loc[("MHA (H_kv=16)", 2048)]
    assert mha["fwd+bwd GB"] == pytest.approx(8 * gqa["fwd+bwd GB"])  # 8x the KV heads, 8x the bytes
    assert "4x faster than flash would need" in B.roofline_text(B.bench_frame([res]))
    assert np.isnan(B.hbm_peak_tb_s("some other GPU")) and B.gather_roofline(pd.DataFrame()).empty

def test_step_profile_frame_reads_stages_and_ratios():
    def res(stage, date, dsa_ms):
        return {"_path": f"data/bench/step-profile/{stage}/step-L512.json",
                "provenance": {"git_commit": "abc1234def", "device": "NVIDIA H100 80GB HBM3", "date": date},
                "config": {"seq_len": 512, "top_k": 128, "batch_size": 16},
                "variants": [{"variant": "dense", "ms_per_step_median": 10.0, "ratio_to_first": 1.0,
                              "top_ops": [{"name": "mm", "self_ms_per_step": 1.0}]},
                             {"variant": "dsa:triton:128", "ms_per_step_median": dsa_ms, "ratio_to_first": dsa_ms / 10,
                              "top_ops": []}]}
    f = B.step_profile_frame([res("before", "2026-11-23T01", 90.0), res("after", "2026-11-23T02", 30.0)])
    assert list(f.stage) == ["before", "before", "after", "after"] and f.commit.iloc[0] == "abc1234"
    assert f.loc[f.date.idxmax(), "stage"] == "after"
    assert f[(f.stage == "after") & (f.variant != "dense")].x_first.item() == pytest.approx(3.0)
    assert f.top_op.iloc[1] == "" and B.step_profile_frame([]).empty

def test_layer_bench_frame_derives_the_ratios_from_raw_timings_old_files_alike():
    from pathlib import Path  # noqa: PLC0415

    path = Path(__file__).resolve().parents[2] / "data/bench/layer/h200-mqa-64x128-k2048.json"
    old = json.loads(path.read_text())  # recorded when the benchmark still wrote speedup_* beside its timings
    raw = {**old, "rows": [{c: v for c, v in r.items() if not c.startswith("speedup_")} for r in old["rows"]]}
    df = B.layer_bench_frame([old])
    pd.testing.assert_frame_equal(df, B.layer_bench_frame([raw]))
    r = old["rows"][0]
    got = df[(df.L == r["L"]) & (df.indexer.str.startswith(f"{r['H_I']}x{r['d_I']}"))
             & (df.baseline == B.LAYER_BASELINES["cudnn"]) & (df["pass"] == B.PASSES["fwdbwd"])]
    assert got.speedup.item() == pytest.approx(r["speedup_cudnn_fwdbwd"])
    assert got.speedup.item() == pytest.approx(r["dense_cudnn_fwdbwd_ms"] / r["dsa_fwdbwd_ms"])


def test_flex_artifacts():
    df = B.bench_frame([bench_result("2026-11-23", lens=(1024,)), bench_result("2026-11-24", lens=(16384,),
                                                                             flex_factor=47.0)])
    a = B.flex_artifacts(df)
    assert set(a.L) == {16384} and (a.ratio > 40).all()


# ----------------------------------------------------------------------------------- per-query k
def test_fixed_mean_k_matches_a_direct_count():
    for l, k in ((8, 3), (128, 96), (64, 64), (5, 9)):
        assert fixed_mean_k(l, k) == pytest.approx(np.mean([min(k, t + 1) for t in range(l)]))
    with pytest.raises(ValueError):
        fixed_mean_k(0, 3)


def test_random_recall_is_the_expected_mass_of_a_random_selection():
    from itertools import combinations

    from dsa.study.analysis import random_recall

    assert random_recall(4, 2) == pytest.approx((2 / 3 + 2 / 4) / 2)
    assert random_recall(8, 8) == 1.0  # no query has to drop a token
    # exhaustive: for any attention distribution over n tokens, a uniformly random k-subset keeps k/n of it
    p = np.random.default_rng(0).dirichlet(np.ones(5))
    kept = [p[list(s)].sum() for s in combinations(range(5), 2)]
    assert np.mean(kept) == pytest.approx(2 / 5)
    assert random_recall(512, 128) == pytest.approx(np.mean([128 / (t + 1) for t in range(128, 512)]))
    with pytest.raises(ValueError):
        random_recall(0, 1)


def test_chosen_k_per_layer_and_policy_override():
    from dsa.model import TransformerLM
    from dsa.model.config import ModelConfig

    cfg = ModelConfig(vocab_size=50, d_model=16, n_layers=2, n_heads=2, max_seq_len=24, attention="dsa", top_k=6,
                      indexer_heads=2, indexer_dim=8, indexer_rope_dim=4)
    model = TransformerLM(cfg, seed=0)
    x = torch.randint(0, 50, (3, 24), generator=torch.Generator().manual_seed(0))
    batches = [(x, x), (x[:1], x[:1])]
    c = chosen_k_counts(model, batches)
    assert c.shape == (2, 4, 24)
    assert torch.equal(c[0, 0], torch.clamp(torch.arange(1, 25), max=6))  # fixed: min(k, t+1)
    df = chosen_k(model, batches)
    assert len(df) == 48 and (df.mean_k <= df.available).all()
    assert df.mean_k.mean() == pytest.approx(fixed_mean_k(24, 6))
    with k_policy_override(model, "mass", mass=0.5, top_k=20):
        a = chosen_k_counts(model, batches)
        assert model.cfg.k_policy == "mass"
    assert (model.cfg.k_policy, model.cfg.k_mass, model.cfg.top_k) == ("fixed", 0.9, 6)
    assert (a >= 1).all() and (a <= 20).all()
    t = torch.arange(1, 25)
    assert (a <= t).all()
    assert not torch.equal(a, torch.clamp(t, max=20).expand_as(a))  # the mass rule keeps fewer than the cap
    with pytest.raises(ValueError, match="policy"):
        with k_policy_override(model, "bogus"):
            pass


# ---------------------------------------------------------------------------------------------- exp5
def exp5_records(effect: float, lens=(64, 256), ratios=(0.25, 0.5, 0.9), seeds=(0, 1, 2)) -> list[dict]:
    """Loss = 4 + effect * (ratio - best(L))^2 + seed noise; the best ratio falls with L (0.9 at the first L,
    0.25 at the last)."""
    rng = np.random.default_rng(1)
    recs = []
    for i, l in enumerate(lens):
        best = ratios[-1] if i == 0 else ratios[0]
        for s in seeds:
            noise = 0.01 * rng.standard_normal()
            recs.append(run_record("dense", l, s, 4.05 + noise, 0.2, 0.02))
            for r in ratios:
                recs.append(run_record("deepseek", l, s, 4.0 + effect * (r - best) ** 2 + noise
                                       + 0.002 * rng.standard_normal(), 0.2, 0.05, top_k=round(r * l)))
    return recs


def test_exp5_verdict_supported_and_not():
    df = R.runs_table(exp5_records(effect=1.0), "x")
    v = V.exp5_verdict(df)
    assert v["verdict"] == "supported", v["summary"]
    assert list(v["optimal"].best_ratio) == [0.9, 0.25]
    assert v["anova"].significant.all()
    assert "L=64: best k/L=0.9" in v["per_len"][0]
    vs = v["vs_dense"]
    assert set(vs.variant) == {"k/L=0.25", "k/L=0.5", "k/L=0.9"}
    # the best ratio is 0.05 below dense at every L: significantly better, paired by seed
    assert vs[(vs.seq_len == 64) & (vs.variant == "k/L=0.9")].significant.item()

    flat = R.runs_table(exp5_records(effect=0.0), "x")
    v = V.exp5_verdict(flat)
    assert v["verdict"] == "not supported" and "noise" in v["summary"]
    assert "every ratio is within noise" in v["per_len"][0]

    rising = R.runs_table(exp5_records(effect=1.0, lens=(256, 64)), "x")
    # lens given in that order: 0.9 best at L=256, 0.25 at L=64 -> the best ratio rises with L
    v = V.exp5_verdict(rising)
    assert v["verdict"] == "not supported" and "does not decrease" in v["summary"]
    assert V.exp5_verdict(flat[flat.attention == "dense"])["verdict"] == "no data"


def test_config_mean_k():
    from dsa.study.analysis import config_mean_k

    assert config_mean_k({"attention": "dense", "seq_len": 128}) == 64.5
    assert config_mean_k({"attention": "dsa", "seq_len": 8, "top_k": 3, "k_policy": "fixed"}) == pytest.approx(
        (1 + 2 + 3 * 6) / 8)
    assert math.isnan(config_mean_k({"attention": "dsa", "seq_len": 8, "top_k": 3, "k_policy": "mass"}))


def test_exp3_verdicts():
    def recs(adaptive_loss: float, adaptive_time: float) -> list[dict]:
        out = []
        for s in (0, 1, 2):
            n = 0.01 * s
            out.append(run_record("dense", 128, s, 4.0 + n, 0.2, 0.02))
            for k, loss in ((32, 4.2), (64, 4.1), (96, 4.05)):
                out.append(run_record("deepseek", 128, s, loss + n, 0.2, 0.05, top_k=k))
            for pol, m in (("mass", 0.8), ("entropy", 0.9)):
                out.append(run_record("deepseek", 128, s, adaptive_loss + n + 0.001 * s * s, 0.2, adaptive_time,
                                      k_policy=pol, top_k=96, k_mass=m))
        return out

    v = V.exp3_verdicts(R.runs_table(recs(4.06, 0.06), "x"), "x").set_index("claim")
    q, sp = V.EXP3_CLAIMS["quality"][0], V.EXP3_CLAIMS["speed"][0]
    assert v.loc[q, "verdict"] == "not supported" and "best fixed arm is fixed k=75%" in v.loc[q, "evidence"]
    assert v.loc[sp, "verdict"] == "not supported" and "0.83x" in v.loc[sp, "evidence"]
    v = V.exp3_verdicts(R.runs_table(recs(3.5, 0.04), "x"), "x").set_index("claim")
    assert v.loc[q, "verdict"] == "supported" and v.loc[sp, "verdict"] == "supported"
    shared = recs(3.5, 0.04)
    for r in shared:
        r["timing"] = {"workers_on_device": 8}
    v = V.exp3_verdicts(R.runs_table(shared, "x"), "x").set_index("claim")
    assert v.loc[sp, "verdict"] == "inconclusive" and v.loc[sp, "evidence"].startswith(
        "not a speed measurement: timed while up to 8 training processes shared the GPU. ")
    only_fixed = R.runs_table([r for r in recs(4.0, 0.05) if r["config"]["k_policy"] == "fixed"], "x")
    assert set(V.exp3_verdicts(only_fixed, "x").verdict) == {"no data"}


def test_speed_verdicts_inconclusive_when_timings_are_noise():
    recs = exp4_records(dsa_time=0.05)
    # per-step times that swing from seed to seed: dense faster for seed 0, slower for seed 1, equal for seed 2
    swing = {("dense", 0): 0.01, ("dense", 1): 0.05, ("dense", 2): 0.03}
    for r in recs:
        c = r["config"]
        t = swing.get((c["attention"], c["seed"]), {0: 0.05, 1: 0.01, 2: 0.031}[c["seed"]])
        r["final"]["time_per_step_s"] = t
        r["final"]["time_per_step_by_phase_s"] = {"sparse": t, "dense": t}
    v = V.speed_verdict(R.runs_table(recs, "noisy"), "noisy")
    assert v.verdict == "inconclusive" and "within noise" in v.evidence
    # one clearly slower comparison decides, the noisy ones are set aside and counted
    for r in recs:
        if r["config"]["seq_len"] == 64 and r["config"]["attention"] == "dsa":
            r["final"]["time_per_step_by_phase_s"]["sparse"] = 0.2 + 0.001 * r["config"]["seed"]
    v = V.speed_verdict(R.runs_table(recs, "mixed"), "mixed")
    assert v.verdict == "refuted" and "comparisons within noise, not counted" in v.evidence


def test_speed_verdict_refuses_timings_from_a_shared_gpu():
    """Runs timed while several training processes time-shared one GPU (a sweep pool's ``timing``) give no
    speed verdict, whatever their ratio; a single process per GPU is judged as usual."""
    recs = exp4_records(dsa_time=0.2)
    base = V.speed_verdict(R.runs_table(recs, "alone"), "alone")
    assert base.verdict == "refuted"
    for r in recs:
        r["timing"] = {"workers_on_device": 1}
    assert V.speed_verdict(R.runs_table(recs, "one"), "one").verdict == "refuted"
    recs[3]["timing"] = {"workers_on_device": 12}
    df = R.runs_table(recs, "shared")
    assert df.gpu_shared_by.max() == 12
    v = V.speed_verdict(df, "shared")
    assert v.verdict == "inconclusive" and "12 training processes" in v.evidence and "ms/step" in v.evidence


def test_flex_shape_numbers_and_breakdown():
    res = bench_result("2026-11-23", lens=(1024, 2048, 4096))
    df = B.bench_frame([res])
    # MHA and GQA at each L are distinct shapes, in file order: 1024 (2), 2048 (2), 4096 (2)
    got = df.groupby(["L", "H_kv"]).flex_shape_no.first()
    assert got.loc[(1024, 16)] == 1 and got.loc[(1024, 2)] == 2 and got.loc[(4096, 2)] == 6
    for c in ("topk_fast_ms", "sparse_fwdbwd_ms", "sparse_fwd_tflops"):
        df[c] = 1.0
    df["dsa_fwd_ms"], df["dsa_fwdbwd_ms"] = 4.0, 2.0
    b = B.layer_breakdown(df)
    assert b["selection share of fwd"].eq(0.25).all() and b["sparse kernel share of fwd+bwd"].eq(0.5).all()
    text = B.breakdown_text(df)
    assert "L=4096, k=2048" in text and "(25%)" in text and "(50%)" in text and "(topk_fast)" in text
    # a row whose layer selected with the chunked path: its time is the selection's share
    df["layer_selection"], df["topk_chunked_ms"] = "topk_chunked", 2.0
    b = B.layer_breakdown(df)
    assert b["selection share of fwd"].eq(0.5).all() and b.selection.eq("topk_chunked").all()
    assert "(topk_chunked) 2.0 ms (50%)" in B.breakdown_text(df)
    assert B.long_times(df, methods={}, topk=False).empty


def test_coverage_matches_sweep_keys():
    from dsa.train.experiments import get_experiment
    from dsa.train.sweep import config_key

    cs = get_experiment("exp4_reproduce", "full")
    recs = [{"key": config_key(c)} for c in cs if c.seq_len != 256]
    cov = R.coverage(recs, "exp4_reproduce", "full")
    assert cov["expected"] == len(cs) == 36 and cov["found"] == 24 and cov["missing_seq_lens"] == [256]
    assert cov["text"] == "24 of 36 configurations of exp4_reproduce (full) recorded; incomplete at L = 256"
    assert R.coverage([{"key": config_key(c)} for c in cs], "exp4_reproduce", "full")["missing_seq_lens"] == []


def test_times_from_different_gpus_are_never_compared():
    # dense timed on a fast GPU, DSA on a slow one: compared across devices DSA would look 2.5x slower
    recs = exp4_records(dsa_time=0.05)
    fast = {**PROV, "device": "fast GPU"}
    for r in recs:
        if r["config"]["attention"] == "dense":
            r["provenance"] = fast
    v = V.speed_verdict(R.runs_table(recs, "mixed"), "mixed")
    assert v.verdict == "no data"
    s = V.summary_table(R.runs_table(recs, "mixed"))
    assert set(s[s.variant == "dense"].device) == {"fast GPU"}
    assert set(s[s.variant != "dense"].device) == {PROV["device"]}


# ------------------------------------------------------------------------------------------ ablations
def ablation_frame(levels, seeds=(0, 1, 2), loss=lambda lv, s: 3.6, recall=lambda lv, s: 0.8,
                   arm=str, source="src") -> pd.DataFrame:
    """A synthetic ablation table (the columns of dsa.study.runs.ablation_table that the verdicts read)."""
    rows = [{"source": source, "level": lv, "arm": arm(lv), "seed": s, "val_loss": loss(lv, s),
             "val_acc": 0.3 - 0.1 * (loss(lv, s) - 3.6), "recall": recall(lv, s),
             "sparse_time_per_step_s": 0.1 + 0.01 * lv / max(levels), "device": "GPU"}
            for lv in levels for s in seeds]
    return pd.DataFrame(rows)


NOISE = {0: 0.004, 1: -0.003, 2: 0.001}  # per-seed noise shared by the arms (what pairing by seed removes)
JITTER = dict(zip([(lv, s) for lv in (1, 2, 4, 8, 16) for s in (0, 1, 2)],
                  np.random.default_rng(0).standard_normal(15)))  # run-to-run noise, no trend
KL_ARM = {0: "KL off (indexer untrained)", 1: "KL on (warm-up 100)"}.get


def test_kl_ablation_verdict_follows_the_data():
    clear = ablation_frame((0, 1), loss=lambda lv, s: 3.77 - 0.15 * lv + NOISE[s] + 0.002 * lv * s,
                           recall=lambda lv, s: 0.46 + 0.37 * lv + 0.01 * s, arm=KL_ARM)
    v = V.kl_ablation_verdict(clear, "H100")
    assert v.verdict == "supported", v.evidence
    assert "val loss 3.623 with KL vs 3.771 without" in v.evidence and "recall 0.840 vs 0.470" in v.evidence
    assert "3 seeds paired" in v.evidence
    # the same arms without any difference beyond the per-seed noise: the neutral answer
    same = ablation_frame((0, 1), loss=lambda lv, s: 3.7 + NOISE[s] + 0.003 * lv * (s - 1),
                          recall=lambda lv, s: 0.5 + 0.01 * lv * (s - 1), arm=KL_ARM)
    assert V.kl_ablation_verdict(same, "x").verdict == "inconclusive"
    # recall clearly up, loss within noise
    rec_only = ablation_frame((0, 1), loss=lambda lv, s: 3.7 + NOISE[s] + 0.003 * lv * (s - 1),
                              recall=lambda lv, s: 0.5 + 0.3 * lv + 0.01 * lv * s, arm=KL_ARM)
    assert V.kl_ablation_verdict(rec_only, "x").verdict == "partly supported"
    worse = ablation_frame((0, 1), loss=lambda lv, s: 3.6 + 0.1 * lv + NOISE[s] + 0.002 * lv * s, arm=KL_ARM)
    assert V.kl_ablation_verdict(worse, "x").verdict == "refuted"
    # an arm missing, or a single seed per arm: no verdict
    for d in (clear[clear.level == 1], clear[clear.seed == 0], clear.iloc[0:0]):
        v = V.kl_ablation_verdict(d, "x")
        assert v.verdict == V.NOT_ENOUGH and "needs both arms" in v.evidence


def test_trend_verdicts_for_warmup_and_heads():
    wu = (0, 100, 200, 500)
    falling = ablation_frame(wu, loss=lambda lv, s: 3.62 - 0.0001 * lv + NOISE[s] + 0.001 * (s - 1) * lv / 500,
                             arm=lambda lv: f"warm-up {lv}")
    v = V.warmup_verdict(falling, "x")
    assert v.verdict == "supported", v.evidence
    assert "fitted change from warm-up 0 to warm-up 500 -0.0500" in v.evidence
    assert "falls monotonically" in v.evidence and "best arm warm-up 500, worst warm-up 0" in v.evidence
    flat = ablation_frame(wu, loss=lambda lv, s: 3.62 + NOISE[s] + 0.002 * (s - 1) * (lv / 100 - 2) ** 2,
                          arm=lambda lv: f"warm-up {lv}")
    assert V.warmup_verdict(flat, "x").verdict == "inconclusive"
    # what the recorded warm-up file holds today: one arm only (and arms of a single seed do not count)
    one_arm = pd.concat([falling[falling.level == 0], falling[(falling.level == 100) & (falling.seed == 0)]])
    v = V.warmup_verdict(one_arm, "x")
    assert v.verdict == V.NOT_ENOUGH and "warm-up 0: 3 seeds, warm-up 100: 1 seed" in v.evidence
    # two arms of 3 seeds and one of 1 seed: judged on the two, the third named as left out
    partial = pd.concat([falling[falling.level <= 100], falling[(falling.level == 500) & (falling.seed == 2)]])
    v = V.warmup_verdict(partial, "x")
    assert v.verdict == "supported" and "left out: warm-up 500" in v.evidence

    heads = (1, 2, 4, 8, 16)
    rising = ablation_frame(heads, loss=lambda lv, s: 3.6 + 0.01 * np.log2(lv) + NOISE[s] + 0.001 * s * np.log2(lv),
                            arm=lambda lv: f"{lv} heads")
    v = V.indexer_heads_verdict(rising, "x")
    assert v.verdict == "refuted" and "fitted change from 1 heads to 16 heads +0.0440" in v.evidence
    better_recall = ablation_frame(heads, loss=lambda lv, s: 3.6 + NOISE[s] + 0.003 * JITTER[lv, s],
                                   recall=lambda lv, s: 0.7 + 0.02 * np.log2(lv) + 0.001 * s * lv,
                                   arm=lambda lv: f"{lv} heads")
    assert V.indexer_heads_verdict(better_recall, "x").verdict == "partly supported"
    # every source judged apart
    both = pd.concat([rising, better_recall.assign(source="other")])
    got = V.ablation_verdicts(both, "heads").set_index("source").verdict
    assert got.to_dict() == {"src": "refuted", "other": "partly supported"}
    with pytest.raises(ValueError, match="ablation"):
        V.ablation_verdicts(both, "depth")


def test_ablation_contrasts_against_the_lowest_level():
    d = ablation_frame((0, 1), loss=lambda lv, s: 3.77 - 0.15 * lv + NOISE[s], arm=KL_ARM)
    c = V.ablation_contrasts(d)
    row = c[c.value == "val_loss"].iloc[0]
    assert row.baseline == "KL off (indexer untrained)" and row.variant == "KL on (warm-up 100)"
    assert row.mean_diff == pytest.approx(-0.15) and row.n_pairs == 3
    assert V.ablation_contrasts(d[d.level == 0]).empty


def test_ablation_tables_share_records_and_coverage():
    from dataclasses import asdict

    from dsa.train.experiments import get_experiment
    from dsa.train.sweep import config_key

    def rec(c, path):
        return {"name": c.run_name(), "config": asdict(c), "key": config_key(c), "_path": path,
                "final": {"val_loss": 3.6, "val_acc": 0.3, "recall": 0.8, "time_per_step_s": 0.1,
                          "time_per_step_by_phase_s": {"sparse": 0.1}}, "provenance": dict(PROV)}

    kl = [rec(c, "data/gpu/ablation_kl.jsonl") for c in get_experiment("ablation_kl", "full")]
    wu = [rec(c, "data/gpu/ablation_warmup.jsonl") for c in get_experiment("ablation_warmup", "full")
          if c.warmup_steps == 0]
    assert R.ablation_coverage(kl, "kl")["text"] == "6 of 6 configurations of ablation_kl (full) recorded"
    cov = R.ablation_coverage(wu, "warmup")
    assert cov["found"] == 3 and cov["missing_arms"] == ["warm-up 100", "warm-up 200", "warm-up 500"]
    # the with-KL runs of the KL ablation are the warm-up-100 and the 4-head configurations
    shared = R.share_records(wu, kl, "warmup")
    assert len(shared) == 6 and sum(bool(r.get("_shared")) for r in shared) == 3
    cov = R.ablation_coverage(shared, "warmup")
    assert cov["text"] == ("6 of 12 configurations of ablation_warmup (full) recorded; missing: warm-up 200 "
                           "(seeds 0, 1, 2), warm-up 500 (seeds 0, 1, 2)")
    assert cov["complete_arms"] == ["warm-up 0", "warm-up 100"]
    heads = R.ablation_table(R.share_records([], kl + wu, "heads"), "rec", "heads")
    assert list(heads.arm.unique()) == ["4 heads"] and set(heads.origin) == {"ablation_kl.jsonl (shared)"}
    t = R.ablation_table(kl, "rec", "kl")
    assert list(t.level) == [0, 0, 0, 1, 1, 1] and list(t.seed) == [0, 1, 2, 0, 1, 2]
    assert list(t.arm.unique()) == ["KL off (indexer untrained)", "KL on (warm-up 100)"]
    assert V.kl_ablation_verdict(t, "rec").verdict == "inconclusive"  # identical numbers in both arms
    assert R.ablation_coverage([], "heads")["missing_arms"] == ["1 head", "2 heads", "4 heads", "8 heads", "16 heads"]


def test_sparse_tflops_count_the_causal_pairs():
    """A causal top-k attends to min(t + 1, k) keys at query t: at k = L that is half of k per query, so the
    sparse methods' TFLOP/s are derived again from their times (older files counted k for every query)."""
    assert B.sparse_flops(2048, 2048, 16, 128) == 4.0 * 16 * 128 * (2048 * 2049 / 2)
    assert B.sparse_flops(8, 3, 1, 1) == 4.0 * (1 + 2 + 3 * 6)
    assert B.sparse_flops(4, 9, 1, 1) == B.sparse_flops(4, 4, 1, 1)
    old = 4.0 * 2048 * 2048 * 16 * 128  # the earlier count
    row = {"L": 2048, "k": 2048, "H": 16, "H_kv": 2, "d": 128, "H_I": 4, "d_I": 64, "dtype": "bfloat16",
           "sparse_fwd_ms": 1.0, "sparse_fwd_tflops": old / 1e9, "dsa_fwdbwd_ms": 2.0, "flash_fwd_ms": 1.0,
           "flash_fwd_tflops": 100.0}
    res = {"provenance": {"device": "NVIDIA H100 80GB HBM3", "git_commit": "abc", "date": "2026-11-23"}, "rows": [row]}
    df = B.bench_frame([res])
    assert df.sparse_fwd_tflops.iloc[0] == pytest.approx(old / 1e9 * 2049 / 4096)
    assert df.dsa_fwdbwd_tflops.iloc[0] == pytest.approx(3.5 * B.sparse_flops(2048, 2048, 16, 128) / 2.0 / 1e9)
    assert df.sparse_vs_flash_tflops.iloc[0] == pytest.approx(old / 1e9 * 2049 / 4096 / 100.0)
    assert row["sparse_fwd_tflops"] == old / 1e9  # the loaded row itself is left as read


def test_targets_hold_at_their_k_and_name_a_better_other_k():
    """The issue states its targets at k = 2048: a top-k 6x faster at k = 8192 does not meet the 5x target
    when k = 2048 reaches 3x, but the text names it; a target without a k takes the best of every k."""
    base = {"H": 16, "H_kv": 16, "d": 128, "H_I": 4, "d_I": 64, "dtype": "bfloat16", "L": 65536}
    rows = [base | {"k": 2048, "torch_topk_ms": 30.0, "radix_topk_ms": 10.0, "radix_only_ms": 20.0},
            base | {"k": 8192, "torch_topk_ms": 60.0, "radix_topk_ms": 10.0, "radix_only_ms": 20.0}]
    res = {"provenance": {"device": "NVIDIA H100 80GB HBM3", "git_commit": "abc", "date": "2026-11-23"}, "rows": rows}
    df = B.bench_frame([res])
    target = next(t for t in B.TARGETS if t.column == "radix_speedup")
    t = B.evaluate_targets(df, [target]).iloc[0]
    assert t.met == "no" and t.best == pytest.approx(3.0) and t.note.startswith("k=2048: ")
    assert "k=2048" in t.measured and "at another k: 6 at L=65536, k=8192" in t.measured
    import dataclasses
    t = B.evaluate_targets(df, [dataclasses.replace(target, at_k=None)]).iloc[0]
    assert t.met == "yes" and t.best == pytest.approx(6.0) and "another k" not in t.measured


def test_selection_profile_rows_per_launch():
    base = {"H": 16, "H_kv": 16, "d": 128, "H_I": 4, "d_I": 64, "dtype": "bfloat16", "k": 2048, "torch_topk_ms": 9.0,
            "radix_only_ms": 5.0}
    rows = [base | {"L": 32768, "radix_topk_ms": 3.0,
                    "radix_stages_ms": {"sample_bracket": 0.5, "bracket_gather": 2.0}},
            base | {"L": 8192, "radix_topk_ms": 1.0}]
    res = {"provenance": {"device": "NVIDIA H100 80GB HBM3", "git_commit": "abc", "date": "2026-11-23"}, "rows": rows}
    prof = B.selection_profile(B.bench_frame([res]))
    assert prof.stage.tolist() == ["sample_bracket", "bracket_gather"] and prof.L.eq(32768).all()
    assert prof.ms.tolist() == [0.5, 2.0] and prof.radix_topk_ms.eq(3.0).all()
    assert prof.one_read_ms.iloc[0] == pytest.approx(32768 * 32769 / 2 * 4 / 3.35e12 * 1e3)
    assert B.selection_profile(pd.DataFrame({"L": [1]})).empty


# ------------------------------------------------------------------------------ test isolation
def test_runs_and_figures_go_to_temporary_folders():
    from dsa.provenance import REPO_ROOT
    from dsa.study.figures import figures_dir
    from dsa.study.runs import runs_dir

    assert not runs_dir("x").resolve().is_relative_to(REPO_ROOT.resolve())
    assert not figures_dir().resolve().is_relative_to(REPO_ROOT.resolve())
