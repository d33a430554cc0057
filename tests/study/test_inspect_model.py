"""The model the notebooks inspect (dsa.study.analysis): one InspectModelConfig sizes both builders, the older
keyword-per-size calls build the same model, bad sizes are named before any work."""

from __future__ import annotations

import pytest
import torch

from dsa.study.analysis import InspectModelConfig, make_inspect_model, train_inspect_model


def test_the_config_sizes_the_random_model_and_keywords_build_the_same_one():
    size = InspectModelConfig(d_model=24, n_layers=3, n_heads=3, indexer_heads=5, indexer_dim=6, indexer_rope_dim=2,
                              max_seq_len=40, top_k=7, seed=3)
    model, label = make_inspect_model("", size, vocab_size=53, init_gain=2.0)
    c = model.cfg
    assert (c.d_model, c.n_layers, c.n_heads, c.indexer_heads, c.indexer_dim, c.indexer_rope_dim, c.max_seq_len,
            c.top_k, c.vocab_size) == (24, 3, 3, 5, 6, 2, 40, 7, 53)
    assert "seed 3" in label and "gain 2" in label and not model.training
    legacy, _ = make_inspect_model("", vocab_size=53, init_gain=2.0, d_model=24, n_layers=3, n_heads=3,
                                   indexer_heads=5, indexer_dim=6, indexer_rope_dim=2, max_seq_len=40, top_k=7, seed=3)
    mixed, _ = make_inspect_model("", InspectModelConfig(d_model=24, seed=9), vocab_size=53, init_gain=2.0,
                                  n_layers=3, n_heads=3, indexer_heads=5, indexer_dim=6, indexer_rope_dim=2,
                                  max_seq_len=40, top_k=7, seed=3)  # a keyword replaces the config's field
    for other in (legacy, mixed):
        assert other.cfg == model.cfg
        assert all(torch.equal(v, other.state_dict()[k]) for k, v in model.state_dict().items())
    assert make_inspect_model("", InspectModelConfig(max_seq_len=8, top_k=16))[0].cfg.top_k == 8  # k capped at L


def test_bad_sizes_are_named_before_any_work():
    with pytest.raises(ValueError, match="indexer_dim"):
        InspectModelConfig(indexer_dim=0)
    with pytest.raises(TypeError, match="n_heads"):
        InspectModelConfig(n_heads=2.0)
    with pytest.raises(ValueError, match="seed"):
        make_inspect_model("", seed=-1)
    with pytest.raises(TypeError, match="unknown model size argument.*n_head\\b"):
        make_inspect_model("", n_head=4)
    with pytest.raises(TypeError, match="cfg must be an InspectModelConfig"):
        make_inspect_model("", {"d_model": 8})
    with pytest.raises(TypeError, match="unknown model size argument.*vocab"):
        train_inspect_model(steps=0, vocab=8)  # named before the corpus is read or a step is trained
