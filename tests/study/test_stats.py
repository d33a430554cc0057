"""dsa.study.stats against textbook values, direct scipy/statsmodels calls on hand-made data, and degenerate cases."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from dsa.study import stats as S

# McDonald et al. mussel shell data (Handbook of Biological Statistics; the scipy f_oneway example):
# F = 7.121, p = 0.000281.
MUSSELS = {
    "tillamook": [0.0571, 0.0813, 0.0831, 0.0976, 0.0817, 0.0859, 0.0735, 0.0659, 0.0923, 0.0836],
    "newport": [0.0873, 0.0662, 0.0672, 0.0819, 0.0749, 0.0649, 0.0835, 0.0725],
    "petersburg": [0.0974, 0.1352, 0.0817, 0.1016, 0.0968, 0.1064, 0.105],
    "magadan": [0.1033, 0.0915, 0.0781, 0.0685, 0.0677, 0.0697, 0.0764, 0.0689],
    "tvarminne": [0.0703, 0.1026, 0.0956, 0.0973, 0.1039, 0.1045],
}


# ---------------------------------------------------------------------------------------- mean / CI
def test_mean_ci_textbook():
    r = S.mean_ci([1, 2, 3, 4])
    # s = 1.2910, s/sqrt(n) = 0.6455, t_{0.975, 3} = 3.1824
    assert r["n"] == 4 and r["mean"] == 2.5
    assert r["sd"] == pytest.approx(1.2909944, abs=1e-6)
    assert r["sem"] == pytest.approx(0.6454972, abs=1e-6)
    assert r["half_width"] == pytest.approx(3.1824463 * 0.6454972, abs=1e-5)
    assert r["ci_low"] == pytest.approx(2.5 - 2.0542603, abs=1e-5)
    assert r["note"] == ""


def test_mean_ci_other_confidence_and_nan_dropped():
    x = [3.1, 2.9, 3.4, np.nan, 3.0, 3.3]
    r = S.mean_ci(x, confidence=0.9)
    a = np.array([3.1, 2.9, 3.4, 3.0, 3.3])
    lo, hi = sps.t.interval(0.9, 4, loc=a.mean(), scale=sps.sem(a))
    assert r["n"] == 5
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((lo, hi))


def test_mean_ci_degenerate():
    r1 = S.mean_ci([2.0])
    assert r1["n"] == 1 and r1["mean"] == 2.0
    assert math.isnan(r1["ci_low"]) and math.isnan(r1["ci_high"]) and math.isnan(r1["sd"])
    assert "n=1" in r1["note"]
    r0 = S.mean_ci([])
    assert r0["n"] == 0 and math.isnan(r0["mean"]) and r0["note"]
    rz = S.mean_ci([1.5, 1.5, 1.5])
    assert rz["ci_low"] == rz["ci_high"] == 1.5 and "zero variance" in rz["note"]


def test_group_summary():
    df = pd.DataFrame({"L": [64, 64, 64, 128], "v": [1.0, 2.0, 3.0, 5.0]})
    g = S.group_summary(df, "L", "v")
    assert list(g["L"]) == [64, 128]
    assert g.loc[0, "mean"] == 2.0 and g.loc[0, "n"] == 3
    assert math.isnan(g.loc[1, "ci_low"]) and "n=1" in g.loc[1, "note"]


# ------------------------------------------------------------------------------------ effect sizes
def test_cohens_d_by_hand():
    # means 4 and 2; variances 4 and 1; pooled SD = sqrt((2*4 + 2*1) / 4) = sqrt(2.5)
    assert S.cohens_d([2, 4, 6], [1, 2, 3]) == pytest.approx(2 / math.sqrt(2.5))
    assert S.cohens_d([1, 2, 3], [2, 4, 6]) == pytest.approx(-2 / math.sqrt(2.5))
    # unequal sizes
    a, b = np.array([5.0, 6, 7, 8]), np.array([1.0, 3])
    pooled = math.sqrt((3 * a.var(ddof=1) + 1 * b.var(ddof=1)) / 4)
    assert S.cohens_d(a, b) == pytest.approx((a.mean() - b.mean()) / pooled)


def test_cohens_d_degenerate():
    assert math.isnan(S.cohens_d([1.0], [2.0]))  # no degrees of freedom
    assert math.isnan(S.cohens_d([], [1.0, 2.0]))
    assert math.isnan(S.cohens_d([1.0, 1.0], [1.0, 1.0]))
    assert S.cohens_d([2.0, 2.0], [1.0, 1.0]) == math.inf
    assert S.effect_size_label(0.1) == "negligible" and S.effect_size_label(-0.9) == "large"
    assert S.effect_size_label(float("nan")) == "undefined"


def test_bonferroni():
    rej, adj = S.adjust_pvalues([0.01, 0.02, 0.04])
    assert adj == pytest.approx([0.03, 0.06, 0.12])
    assert list(rej) == [True, False, False]
    rej, adj = S.adjust_pvalues([0.4, float("nan"), 0.01])  # NaN left out of the count
    assert adj[0] == pytest.approx(0.8) and math.isnan(adj[1]) and adj[2] == pytest.approx(0.02)
    assert list(rej) == [False, False, True]


# ------------------------------------------------------------------------------------------- ANOVA
def test_anova_textbook():
    r = S.one_way_anova(MUSSELS)
    assert r["F"] == pytest.approx(7.121019471642447, rel=1e-9)
    assert r["p"] == pytest.approx(0.0002812242314534544, rel=1e-6)
    assert r["k"] == 5 and r["N"] == 39


def test_anova_by_with_bonferroni():
    rng = np.random.default_rng(0)
    rows = []
    for L, shift in ((64, 0.0), (128, 1.0)):
        for ratio in (0.25, 0.5, 0.75):
            for seed in range(3):
                rows.append({"seq_len": L, "ratio": ratio, "seed": seed,
                             "val_loss": 5 + shift * ratio + rng.normal(0, 0.1)})
    df = pd.DataFrame(rows)
    out = S.anova_by(df)
    for _, r in out.iterrows():
        g = df[df.seq_len == r["seq_len"]]
        ref = sps.f_oneway(*[g[g.ratio == q].val_loss for q in (0.25, 0.5, 0.75)])
        assert r["F"] == pytest.approx(ref.statistic) and r["p"] == pytest.approx(ref.pvalue)
        assert r["p_adj"] == pytest.approx(min(1.0, 2 * ref.pvalue))
    assert bool(out.set_index("seq_len").loc[128, "significant"])


def test_anova_degenerate():
    assert math.isnan(S.one_way_anova({"a": [1.0, 2.0]})["F"])  # one group
    r = S.one_way_anova({"a": [1.0], "b": [2.0], "c": [3.0]})  # one run per group
    assert math.isnan(r["p"]) and "one run per group" in r["note"]
    r = S.one_way_anova({"a": [1.0, 1.0], "b": [2.0, 2.0]})
    assert math.isnan(r["F"]) and "zero" in r["note"]
    df = pd.DataFrame({"seq_len": [64, 64], "ratio": [0.25, 0.5], "val_loss": [1.0, 2.0]})
    out = S.anova_by(df)
    assert math.isnan(out.loc[0, "p_adj"]) and not out.loc[0, "significant"]


# --------------------------------------------------------------------------------------- Tukey HSD
def test_tukey_matches_statsmodels_and_scipy():
    from statsmodels.stats.multicomp import pairwise_tukeyhsd

    g = {0.25: [1.0, 2.0, 3.0], 0.5: [2.0, 3.0, 4.5], 0.75: [5.0, 6.0, 7.0]}
    t = S.tukey(g)
    vals = np.concatenate(list(g.values()))
    labs = np.repeat(["0.25", "0.5", "0.75"], 3)
    ref = pairwise_tukeyhsd(vals, labs)
    assert list(zip(t.group1, t.group2)) == [(0.25, 0.5), (0.25, 0.75), (0.5, 0.75)]
    assert t.meandiff.tolist() == pytest.approx(list(ref.meandiffs))
    assert t.p_adj.tolist() == pytest.approx(list(ref.pvalues))
    assert t.reject.tolist() == list(ref.reject)
    # an independent implementation agrees on the p-values
    sp = sps.tukey_hsd(*[np.array(v) for v in g.values()])
    assert t.p_adj.tolist() == pytest.approx([sp.pvalue[0, 1], sp.pvalue[0, 2], sp.pvalue[1, 2]], rel=1e-3)
    assert t.cohens_d.iloc[1] == pytest.approx(S.cohens_d(g[0.75], g[0.25]))


def test_tukey_degenerate_has_notes():
    t = S.tukey({"a": [1.0], "b": [2.0]})
    assert len(t) == 1 and math.isnan(t.p_adj[0]) and not t.reject[0] and t.note[0]


# ----------------------------------------------------------------------------------- optimal ratio
def test_optimal_level():
    g = {0.25: [1.0, 2.0, 3.0], 0.5: [2.0, 3.0, 4.5], 0.75: [5.0, 6.0, 7.0]}
    r = S.optimal_level(g)
    assert r["best"] == 0.25 and r["mean"] == 2.0
    assert r["ties"] == [0.25, 0.5]  # 0.5 not significantly worse by Tukey, 0.75 is
    assert (r["ci_low"], r["ci_high"]) == pytest.approx(sps.t.interval(0.95, 2, loc=2.0, scale=sps.sem(g[0.25])))


def test_optimal_by_degenerate_single_seed():
    df = pd.DataFrame({"seq_len": [64, 64, 64], "ratio": [0.25, 0.5, 0.75], "val_loss": [3.0, 2.0, 2.5]})
    out = S.optimal_by(df)
    assert out.loc[0, "best_ratio"] == 0.5 and out.loc[0, "mean"] == 2.0
    assert math.isnan(out.loc[0, "ci_low"])
    assert out.loc[0, "ratios_not_worse"] == [0.25, 0.5, 0.75] and "n=1" in out.loc[0, "note"]
    assert S.optimal_level({})["best"] is None


# ------------------------------------------------------------------------------ pairwise t-tests
def test_pairwise_ttests_welch_and_bonferroni():
    df = pd.DataFrame({"seq_len": 64, "ratio": np.repeat([0.25, 0.5, 0.75], 3),
                       "val_loss": [1.0, 2.0, 3.0, 2.0, 3.0, 4.5, 5.0, 6.0, 7.0]})
    out = S.pairwise_ttests(df)
    ref = sps.ttest_ind([5.0, 6.0, 7.0], [1.0, 2.0, 3.0], equal_var=False)
    row = out[(out.group1 == 0.25) & (out.group2 == 0.75)].iloc[0]
    assert row["t"] == pytest.approx(ref.statistic) and row["p"] == pytest.approx(ref.pvalue)
    assert row["p_adj"] == pytest.approx(min(1, 3 * ref.pvalue))


# -------------------------------------------------------------------------------- paired compare
def test_paired_comparison_by_hand():
    dense = {0: 1.0, 1: 2.0, 2: 3.0, 3: 4.0}
    sparse = {0: 2.0, 1: 4.0, 2: 5.0, 3: 7.0}  # differences 1, 2, 2, 3: mean 2, sd 0.8165
    r = S.paired_comparison(dense, sparse)
    assert r["n_pairs"] == 4 and "paired" in r["test"]
    assert r["mean_diff"] == pytest.approx(2.0)
    assert r["t"] == pytest.approx(2.0 / (math.sqrt(2 / 3) / 2))
    ref = sps.ttest_rel(list(sparse.values()), list(dense.values()))
    assert r["p"] == pytest.approx(ref.pvalue)
    assert (r["ci_low"], r["ci_high"]) == pytest.approx(tuple(ref.confidence_interval()))
    assert r["rel_diff"] == pytest.approx(2.0 / 2.5)


def test_paired_comparison_unmatched_and_degenerate():
    r = S.paired_comparison({0: 1.0, 1: 2.0, 2: 1.5}, {5: 3.0, 6: 4.0, 7: 3.3})
    ref = sps.ttest_ind([3.0, 4.0, 3.3], [1.0, 2.0, 1.5], equal_var=False)
    assert "Welch" in r["test"] and r["p"] == pytest.approx(ref.pvalue)
    assert (r["ci_low"], r["ci_high"]) == pytest.approx(tuple(ref.confidence_interval()))
    r1 = S.paired_comparison({0: 1.0}, {0: 1.5})  # one seed: difference known, no test
    assert r1["mean_diff"] == pytest.approx(0.5) and math.isnan(r1["p"]) and math.isnan(r1["ci_low"])
    assert "n=1" in r1["note"]
    r2 = S.paired_comparison({0: 1.0, 1: 2.0, 2: 9.0}, {0: 1.5, 1: 2.5})
    assert r2["n_pairs"] == 2 and "unpaired" in r2["note"]
    r3 = S.paired_comparison({}, {0: 1.0})
    assert r3["test"] is None and r3["note"]


# ------------------------------------------------------------------------------------------ frame
def _record(attention="dsa", recipe="scratch", leak=True, L=64, k=21, seed=0, loss=2.0, policy="fixed"):
    fin = {"val_loss": loss, "val_acc": 0.5, "val_ppl": math.exp(loss), "time_per_step_s": 0.1,
           "tokens_per_s": 1000.0, "peak_mem_mb": None, "peak_rss_mb": 500.0}
    if attention == "dsa":
        fin["recall"] = 0.7
    if leak:
        fin["val_loss_causal_eval"] = loss + 3
    return {"name": "x", "config": {"attention": attention, "recipe": recipe, "leak_future": leak, "seq_len": L,
                                    "top_k": k, "k_policy": policy, "k_mass": 0.9, "seed": seed, "steps": 10},
            "final": fin, "history": [{"iter": 0, "val_loss": 7.0}, {"iter": 10, "val_loss": loss}],
            "provenance": {"device": "cpu", "git_commit": "abcdef123456", "git_dirty": True,
                           "date": "2026-01-02T00:00:00+00:00"}}


def test_runs_frame():
    recs = [_record(), _record(attention="dense", recipe="deepseek", leak=False, k=64),
            _record(recipe="deepseek", leak=False, k=42, policy="mass")]
    df = S.runs_frame(recs)  # no design: dsa.study.legacy snaps k/L to the designed ratios
    assert list(df.columns) == list(S.FRAME_COLUMNS)
    assert df.ratio.tolist() == [0.33, 1.0, 0.67]
    assert df.variant.tolist() == ["DSA scratch (leaky)", "dense", "DSA deepseek, k=mass"]
    assert df.val_loss_causal_eval.iloc[0] == 5.0 and math.isnan(df.val_loss_causal_eval.iloc[1])
    assert df.peak_mem.iloc[0] == 500.0 and df.peak_mem_kind.iloc[0] == "cpu_rss_mb"
    assert df.commit.iloc[0] == "abcdef1+dirty" and df.date.iloc[0] == "2026-01-02"
    assert math.isnan(df.recall.iloc[1])
    h = S.history_frame(recs)
    assert len(h) == 6 and set(h.variant) == set(df.variant)
    assert S.runs_frame([]).empty


def test_compare_variants():
    recs = [_record(attention="dense", recipe="deepseek", leak=False, seed=s, loss=3.0 + 0.1 * s) for s in range(3)]
    recs += [_record(seed=s, loss=1.0 + 0.05 * s) for s in range(3)]
    out = S.compare_variants(S.runs_frame(recs), baseline="dense")
    assert len(out) == 1 and out.loc[0, "variant"] == "DSA scratch (leaky)"
    assert out.loc[0, "mean_diff"] == pytest.approx(-2.0 - 0.05)
    assert out.loc[0, "n_pairs"] == 3
