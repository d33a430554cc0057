"""Equivalence tests on synthetic data whose truth is known: equal within the margin -> 'equivalent',
shifted beyond it -> not, too noisy -> 'inconclusive'; seed-blocked fits recover a planted effect."""

import math

import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.weightstats import ttost_paired

from dsa.study.equivalence import (
    binomial_ci,
    blocked_contrasts,
    blocked_slope,
    noise_floor,
    tost_from_estimate,
    tost_paired,
    tost_proportions,
    verdict_text,
)


def _seeded(n, shift, sd, rng, seed_sd=0.2):
    """Per-seed values of a baseline and a variant that share each seed's offset (the seed effect)."""
    base = 3.6 + rng.normal(0, seed_sd, n)
    return dict(enumerate(base + rng.normal(0, sd, n))), dict(enumerate(base + shift + rng.normal(0, sd, n)))


def test_equal_within_margin_is_equivalent():
    rng = np.random.default_rng(1)
    a, b = _seeded(20, 0.0, 0.003, rng)
    r = tost_paired(a, b, margin=0.02)
    assert r["verdict"] == "equivalent" and r["p_tost"] < 0.05
    assert r["resolution"] < 0.02 and r["ci90_low"] > -0.02 and r["ci90_high"] < 0.02


def test_shift_beyond_margin_is_different():
    rng = np.random.default_rng(2)
    a, b = _seeded(10, 0.05, 0.003, rng)
    r = tost_paired(a, b, margin=0.02)
    assert r["verdict"] == "different" and r["p_tost"] > 0.5 and r["ci95_low"] > 0.02


def test_noisy_few_seeds_is_inconclusive():
    rng = np.random.default_rng(3)
    a, b = _seeded(3, 0.0, 0.05, rng)
    r = tost_paired(a, b, margin=0.02)
    assert r["verdict"] == "inconclusive" and r["resolution"] > 0.02
    assert "cannot conclude equivalence at ±0.020" in verdict_text(r)


def test_small_real_difference_inside_margin_is_equivalent_with_note():
    rng = np.random.default_rng(4)
    a, b = _seeded(40, 0.01, 0.002, rng)
    r = tost_paired(a, b, margin=0.02)
    assert r["verdict"] == "equivalent" and r["ci95_low"] > 0 and "smaller than the margin" in r["note"]


def test_tost_p_matches_statsmodels():
    rng = np.random.default_rng(5)
    a, b = _seeded(8, 0.004, 0.01, rng)
    ours = tost_paired(a, b, margin=0.02)["p_tost"]
    theirs = ttost_paired(np.array(list(b.values())), np.array(list(a.values())), -0.02, 0.02)[0]
    assert ours == pytest.approx(theirs, rel=1e-9)


def test_pairs_only_common_seeds_and_few_pairs():
    r = tost_paired({0: 1.0, 1: 2.0, 7: 9.0}, {0: 1.0, 1: 2.01, 3: 5.0}, margin=0.1)
    assert r["n_pairs"] == 2
    one = tost_paired({0: 1.0}, {0: 1.0}, margin=0.1)
    assert one["verdict"] == "inconclusive" and math.isnan(one["resolution"])
    assert "cannot test equivalence" in verdict_text(one)


@pytest.mark.parametrize("bad", [0, -0.1, float("nan"), True, "0.1"])
def test_bad_margin(bad):
    with pytest.raises(ValueError, match="margin"):
        tost_from_estimate(0.0, 0.01, 5, bad)


def test_blocked_contrasts_recover_planted_effects():
    rng = np.random.default_rng(6)
    rows = []
    for seed in range(6):
        off = rng.normal(0, 0.3)  # large seed effect: a one-way analysis drowns in it, a blocked one does not
        for arm, shift in (("dense", 0.0), ("same", 0.0), ("worse", 0.05)):
            rows.append({"seed": seed, "arm": arm, "val_loss": 3.6 + off + shift + rng.normal(0, 0.004)})
    df = pd.DataFrame(rows)
    res = blocked_contrasts(df, "arm", "val_loss", "dense", margin=0.02).set_index("level")
    assert res.loc["same", "verdict"] == "equivalent"
    assert res.loc["worse", "verdict"] == "different"
    assert res.loc["worse", "diff"] == pytest.approx(0.05, abs=0.01)
    assert res.loc["worse", "p_factor_blocked"] < 1e-6 < res.loc["worse", "p_factor_oneway"]
    with pytest.raises(ValueError, match="baseline"):
        blocked_contrasts(df, "arm", "val_loss", "nope", margin=0.02)


def test_blocked_slope_recovers_slope():
    rng = np.random.default_rng(7)
    offsets = {0: 0.1, 1: -0.2, 2: 0.3}  # seed effects, constant within a seed
    rows = [{"seed": s, "x": x, "y": 1.0 + offsets[s] - 0.003 * x + rng.normal(0, 0.001)}
            for s in range(3) for x in range(5)]
    df = pd.DataFrame(rows)
    r = blocked_slope(df, "x", "y")
    assert r["change"] == pytest.approx(-0.012, abs=0.003) and r["ci_high"] < 0
    with pytest.raises(ValueError, match="two distinct"):
        blocked_slope(df.assign(x=1), "x", "y")


def test_noise_floor_of_replicates():
    df = pd.DataFrame({"cfg": ["a", "a", "a", "b", "b", "c"], "seed": [0, 0, 0, 0, 0, 0],
                       "v": [1.0, 1.02, 1.01, 2.0, 2.03, 5.0]})
    r = noise_floor(df, ["cfg", "seed"], "v")
    assert r["n_groups"] == 2 and r["n_runs"] == 5
    ss = (0.01**2 + 0.01**2 + 0) + 2 * 0.015**2
    assert r["pooled_sd"] == pytest.approx(math.sqrt(ss / 3))
    assert r["max_abs_diff"] == pytest.approx(0.03)
    assert noise_floor(df[df.cfg == "c"], ["cfg", "seed"], "v")["n_groups"] == 0


def test_binomial_ci_and_proportions():
    lo, hi = binomial_ci(50, 100)
    assert lo < 0.5 < hi and hi - lo == pytest.approx(0.19, abs=0.01)
    lo0, hi0 = binomial_ci(0, 20, method="beta")
    assert lo0 == 0 and 0.1 < hi0 < 0.2
    with pytest.raises(ValueError):
        binomial_ci(5, 3)
    eq = tost_proportions(5000, 10000, 5010, 10000, margin=0.03)
    assert eq["verdict"] == "equivalent"
    assert tost_proportions(500, 1000, 800, 1000, margin=0.03)["verdict"] == "different"
