"""Cached decoding at DeepSeek-V3.2's attention shape on the GPU kernels (CUDA only): one MLA-MQA layer of 128
heads on a 512 + 64 latent cache, an indexer of 64 x 128 and k = 2048, a prompt of ~8K tokens then single
tokens. Decoding through the cache (the Triton decode kernels) gives the logits and the selections of one full
forward (the Triton prefill kernels). fp32, so that the two paths differ only in summation order and the
selections in nothing but exact ties; dense MLA in MQA mode beside it as the control."""

from __future__ import annotations

import pytest
import torch

from dsa.layers import MLAConfig
from dsa.model import ModelConfig, TransformerLM

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: real-size kernels")

PROMPT, NEW, TOP_K = 8191, 5, 2048


def _model(attention: str) -> TransformerLM:
    cfg = ModelConfig(vocab_size=509, d_model=1024, n_layers=1, n_heads=128, max_seq_len=PROMPT + NEW,
                      attention=attention, top_k=TOP_K, indexer_heads=64, indexer_dim=128, indexer_rope_dim=64,
                      mla=MLAConfig(kv_rank=512, rope_dim=64, nope_dim=128, v_dim=128, dense_mode="mqa"),
                      impl="triton")
    return TransformerLM(cfg, seed=11).eval().cuda()


@pytest.mark.parametrize("attention", ["dense", "dsa"])
def test_cached_decoding_at_the_mla_mqa_shape_matches_the_full_forward(attention):
    m = _model(attention)
    g = torch.Generator().manual_seed(7)
    tokens = torch.randint(0, 509, (2, PROMPT + NEW), generator=g).cuda()
    with torch.no_grad():
        full = m(tokens)
        cache = m.init_cache(2, PROMPT + NEW)
        outs = [m(tokens[:, :PROMPT], cache=cache)]
        outs += [m(tokens[:, t:t + 1], cache=cache) for t in range(PROMPT, PROMPT + NEW)]
    logits = torch.cat([o.logits for o in outs], 1)
    scale = full.logits.abs().max()
    assert (logits - full.logits).abs().max() <= 1e-4 * scale
    if attention == "dsa":
        for j, o in enumerate(outs[1:]):
            got = o.aux[0].selection[:, 0].sort(-1).values
            want = full.aux[0].selection[:, PROMPT + j].sort(-1).values
            assert torch.equal(got, want), f"decode step {j}: the selections differ"
