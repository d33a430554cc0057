"""The recomputation's checks on small tables with planted effects (dsa.study.recheck)."""

import numpy as np
import pandas as pd
import pytest

from dsa.study import recheck as R


def _exp5(rng, worse_cell=(1024, 0.9), shift=0.05, outlier=(512, 0.25, 0)):
    rows = []
    for length in (512, 1024):
        for seed in range(3):
            off = rng.normal(0, 0.05)
            rows.append(dict(variant="dense", ratio=1.0, seq_len=length, top_k=length, seed=seed, device="H100",
                             val_loss=3.7 + off + rng.normal(0, 0.002)))
            for r in (0.25, 0.5, 0.9):
                v = 3.7 + off + rng.normal(0, 0.002) + (shift if (length, r) == worse_cell else 0)
                v += 0.3 if (length, r, seed) == outlier else 0
                rows.append(dict(variant="DSA deepseek", ratio=r, seq_len=length, top_k=int(r * length), seed=seed,
                                 device="H200" if length == 512 and seed == 0 else "H100", val_loss=v))
    return pd.DataFrame(rows)


def test_exp5_family_counts_every_test_and_the_seeds_worse():
    df = _exp5(np.random.default_rng(0), outlier=(0, 0, 0))
    fam = R.exp5_family(df)
    assert len(fam) == 6 and (fam.family == 6).all()
    row = fam[(fam.seq_len == 1024) & (fam.variant == "k/L=0.9")].iloc[0]
    assert row.seeds_worse == 3 and row.n_seeds == 3 and row.p < 0.01
    assert row.p_adj == pytest.approx(min(1.0, row.p * 6))


def test_outliers_finds_the_planted_run_and_devices_are_listed():
    df = R._with_ratio_arm(_exp5(np.random.default_rng(1)))
    top = R.outliers(df, "ratio_arm", top=1).iloc[0]
    assert (top.seq_len, top.arm, top.seed) == (512, "k/L=0.25", 0)
    dev = R.devices_by(df).set_index("seq_len")
    assert dev.loc[512, "mixed"] and not dev.loc[1024, "mixed"]


def test_heads_analyses_blocked_fit_is_narrower():
    rng = np.random.default_rng(2)
    rows = [dict(level=h, seed=s, val_loss=3.6 + 0.2 * s - 0.003 * np.log2(h) + rng.normal(0, 0.001))
            for s in range(3) for h in (1, 2, 4, 8, 16)]
    res = R.heads_analyses(pd.DataFrame(rows)).set_index("analysis")
    blocked = res.iloc[1]
    assert blocked.change == pytest.approx(-0.012, abs=0.004) and blocked.ci_high < 0
    assert res.iloc[0].change == pytest.approx(blocked.change)  # balanced design: the same point estimate


def test_parity_equivalence_rows_and_words():
    rng = np.random.default_rng(3)
    rows = [dict(seq_len=512, arm=a, seed=s, val_loss=3.7 + 0.1 * s + rng.normal(0, 0.001) + (0.1 if a == "far" else 0))
            for s in range(6) for a in ("dense", "same", "far")]
    res = R.parity_equivalence(pd.DataFrame(rows), "arm", noise=0.014).set_index("arm")
    assert res.loc["same", "verdict"] == "equivalent" and res.loc["far", "verdict"] == "different"
    assert "noise floor" in res.loc["same", "verdict_text"]


def _rec(name, loss, seed=0, top_k=128, policy="fixed", attention="dsa", mean_k=None, commit="a" * 40, dirty=False):
    return {"name": name, "seed": seed, "config": {"attention": attention, "recipe": "deepseek", "seq_len": 512,
            "top_k": top_k, "k_policy": policy, "seed": seed, "name": name},
            "final": {"val_loss": loss, "mean_k": mean_k}, "provenance": {"git_commit": commit, "git_dirty": dirty}}


def test_replicate_noise_and_provenance_gaps():
    recs = [_rec("a", 3.60), _rec("a", 3.62), _rec("b", 3.5, seed=1),
            _rec("c", 3.4, top_k=64, commit="abc", dirty=None)]
    recs[1]["config"]["name"] = "renamed"  # the name does not make a run different
    res = R.replicate_noise(recs)
    assert res["n_groups"] == 1 and res["max_abs_diff"] == pytest.approx(0.02)
    assert R.provenance_gaps(recs) == {"records": 4, "dirty_unknown": 1, "short_hash": 1}


def test_equal_compute_interpolates_the_fixed_arms():
    recs = []
    for s in range(3):
        recs += [_rec("f1", 3.70, s, 64, mean_k=60), _rec("f2", 3.60, s, 128, mean_k=120),
                 _rec("m", 3.65 + 0.001 * s, s, 384, "mass", mean_k=90),
                 _rec("d", 3.6, s, 256, attention="dense")]
    kpq = R.keys_per_query(recs)
    assert kpq[kpq.policy == "dense"].keys_per_query.iloc[0] == pytest.approx(256.5)
    row = R.equal_compute(kpq).iloc[0]
    assert row.n_seeds == 3 and row.diff_vs_fixed_at_equal_keys == pytest.approx(0.001, abs=1e-9)
