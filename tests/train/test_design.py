"""Every configuration of the study's experiments records its design factors as it is created; they stay out
of the sweep key, and the labels the study reads back are the ones built here."""

from __future__ import annotations

from dataclasses import replace

import pytest

from dsa.train.cli import build_train_parser
from dsa.train.design import ARMS, LEAKY, SPARSITY_RATIOS, arm_label, k_rule_text
from dsa.train.experiments import EXPERIMENTS, SIZES, get_experiment
from dsa.train.sweep import config_key
from dsa.train.trainer import TrainConfig


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_each_configuration_records_its_design(name, size):
    for c in get_experiment(name, size):
        d = c.design
        assert d["experiment"] == name
        assert d["arm"] == arm_label(c.attention, c.recipe, c.leak_future, c.k_policy)
        if c.attention == "dsa":
            # k is the designed ratio of L, up to rounding to a whole token
            assert abs(c.top_k - d["ratio"] * c.seq_len) < 1, (c, d)
            assert d["k_rule"] == k_rule_text(d["ratio"])
        else:
            assert "ratio" not in d
        if name.startswith("ablation_"):
            field = {"kl": "indexer_kl", "warmup": "warmup_steps", "heads": "indexer_heads"}[d["ablation"]]
            assert d["level"] == int(getattr(c, field))


def test_the_designed_ratios_are_the_experiments_own():
    ratios = {c.design["ratio"] for c in get_experiment("exp5_sparsity", "full") if c.attention == "dsa"}
    assert ratios == set(SPARSITY_RATIOS)  # 0.33, not the 21/64 = 0.328 that k = round(0.33 * 64) gives back
    arms = {c.design["arm"] for c in get_experiment("exp4_reproduce", "small")}
    assert arms == set(ARMS) and LEAKY in arms


def test_design_is_not_part_of_the_key_and_is_checked():
    c = get_experiment("exp5_sparsity", "small")[1]
    assert config_key(c) == config_key(replace(c, design={})) == config_key(replace(c, design={"arm": "other"}))
    with pytest.raises(TypeError, match="design"):
        TrainConfig(design="L/8")
    assert "--design" not in build_train_parser().format_help()


def test_k_rule_text():
    assert k_rule_text(0.5) == "L/2" and k_rule_text(0.125) == "L/8" and k_rule_text(0.33) == "0.33·L"
    assert k_rule_text(0.75) == "0.75·L"
