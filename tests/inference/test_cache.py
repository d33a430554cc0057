"""Decoding with caches gives the logits of one full forward, for dense and DSA in every layout; batches of
different lengths; generation; bad cached calls refused with an error naming the argument."""

from __future__ import annotations

import pytest
import torch

from dsa.inference import cache_row_bytes, generate, sample_next
from dsa.layers import MLAConfig
from dsa.model import ModelConfig, TransformerLM
from dsa.ops.quantize import quantize_indexer_keys

LAYOUTS = {
    "mha": {},
    "gqa": {"n_kv_heads": 2},
    "mqa": {"n_kv_heads": 1},
    "mla": {"mla": MLAConfig(kv_rank=24, rope_dim=8, nope_dim=16, v_dim=12, q_rank=20)},
    "mla-mqa-dense": {"mla": MLAConfig(kv_rank=24, rope_dim=8, nope_dim=16, v_dim=12, dense_mode="mqa")},
}


def _model(attention: str, layout: str, top_k: int = 5, **kw) -> TransformerLM:
    """attention: 'dense', 'dsa', or 'dsa-fp8' (DSA with the FP8 indexer: its cache holds e4m3 keys)."""
    if attention == "dsa-fp8":
        attention, kw = "dsa", {**kw, "indexer_precision": "fp8"}
    cfg = ModelConfig(vocab_size=97, d_model=48, n_layers=2, n_heads=4, max_seq_len=64, attention=attention,
                      top_k=top_k, indexer_dim=16, indexer_rope_dim=8, impl="reference", **LAYOUTS[layout], **kw)
    return TransformerLM(cfg, seed=3).eval()


def _splits(total: int, gen: torch.Generator) -> list[int]:
    """A prompt of random length, then chunks of 1..3 tokens, then single tokens."""
    cuts = [int(torch.randint(1, total - 4, (1,), generator=gen))]
    while cuts[-1] < total:
        step = int(torch.randint(1, 4, (1,), generator=gen)) if len(cuts) < 3 else 1
        cuts.append(min(total, cuts[-1] + step))
    return cuts


@pytest.mark.parametrize("attention", ["dense", "dsa", "dsa-fp8"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_decoding_matches_full_forward(attention, layout, gen):
    m = _model(attention, layout)
    total = int(torch.randint(13, 30, (1,), generator=gen)) | 1  # odd
    tokens = torch.randint(0, 97, (3, total), generator=gen)
    with torch.no_grad():
        full = m(tokens)
        cache = m.init_cache(3, total + int(torch.randint(0, 5, (1,), generator=gen)))
        parts, start, sels = [], 0, []
        for end in _splits(total, gen):
            out = m(tokens[:, start:end], cache=cache)
            parts.append(out.logits)
            sels.append(out.aux[0].selection)
            start = end
    torch.testing.assert_close(torch.cat(parts, 1), full.logits, atol=2e-5, rtol=1e-4)
    assert cache.lengths.tolist() == [total] * 3
    if attention != "dense":  # the same sets as the full forward's causal selection
        dec = torch.cat([torch.nn.functional.pad(s, (0, 5 - s.shape[-1]), value=-1) for s in sels], 1)
        assert torch.equal(dec.sort(-1).values, full.aux[0].selection.sort(-1).values)


@pytest.mark.parametrize("attention", ["dense", "dsa"])
def test_dense_mode_of_a_dsa_model_and_k_past_the_context(attention, gen):
    """sparse=False decodes densely; a k larger than every context selects all cached rows (= dense)."""
    m = _model(attention, "gqa", top_k=40)
    tokens = torch.randint(0, 97, (2, 17), generator=gen)
    with torch.no_grad():
        full = m(tokens, sparse=False).logits
        for sparse in (False, True):
            cache = m.init_cache(2, 17)
            dec = torch.cat([m(tokens[:, :6], cache=cache, sparse=sparse).logits]
                            + [m(tokens[:, j:j + 1], cache=cache, sparse=sparse).logits for j in range(6, 17)], 1)
            torch.testing.assert_close(dec, full, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("attention", ["dense", "dsa", "dsa-fp8"])
@pytest.mark.parametrize("layout", ["mqa", "mla"])
def test_batch_of_different_lengths(attention, layout, gen):
    """Right-padded prompts of different lengths, then decoding: each sequence's logits are those of its own
    full forward."""
    m = _model(attention, layout)
    lens = [5, 11, 8]
    extra = 4
    seqs = [torch.randint(0, 97, (n + extra,), generator=gen) for n in lens]
    prompt = torch.zeros(3, max(lens), dtype=torch.long)
    for i, (s, n) in enumerate(zip(seqs, lens)):
        prompt[i, :n] = s[:n]
    with torch.no_grad():
        cache = m.init_cache(3, max(lens) + extra)
        first = m(prompt, cache=cache, lengths=torch.tensor(lens)).logits
        steps = [m(torch.stack([s[n + j] for s, n in zip(seqs, lens)])[:, None], cache=cache).logits[:, 0]
                 for j in range(extra)]
        for i, (s, n) in enumerate(zip(seqs, lens)):
            ref = m(s[None]).logits[0]
            torch.testing.assert_close(first[i, :n], ref[:n], atol=2e-5, rtol=1e-4)
            torch.testing.assert_close(torch.stack([x[i] for x in steps]), ref[n:], atol=2e-5, rtol=1e-4)
    assert cache.lengths.tolist() == [n + extra for n in lens]


def test_generate_greedy_is_the_argmax_of_the_full_forward(gen):
    m = _model("dsa", "mla")
    prompts = [torch.randint(0, 97, (n,), generator=gen).tolist() for n in (4, 9)]
    out = generate(m, prompts, 6, temperature=0, record_selection=True)
    assert out.prompt_lengths == [4, 9]
    for p, new in zip(prompts, out.tokens):
        seq = list(p)
        for tok in new:
            with torch.no_grad():
                assert tok == int(m(torch.tensor([seq])).logits[0, -1].argmax())
            seq.append(tok)
    assert len(out.selections) == 6 and len(out.selections[0]) == 2
    last = out.selections[-1][0]  # the last fed token of sequence 0 sits at position 4 + 4: 5 of its 9 positions
    assert last.shape == (2, 5) and int(last[0].max()) <= 8 and int(last[0].min()) >= 0
    assert len(set(last[0].tolist())) == 5


def test_generate_sampling_is_seeded_and_top_p_restricts(gen):
    m = _model("dense", "gqa")
    a = generate(m, [[1, 2, 3]], 8, temperature=1.0, top_p=0.9, seed=7).tokens
    assert a == generate(m, [[1, 2, 3]], 8, temperature=1.0, top_p=0.9, seed=7).tokens
    logits = torch.tensor([[5.0, 4.0, -9.0, -9.0]])
    draws = {int(sample_next(logits, 1.0, 0.5, torch.Generator().manual_seed(s))) for s in range(30)}
    assert draws == {0}  # token 0 alone holds >= 0.5 of the mass
    draws = {int(sample_next(logits, 1.0, 1.0, torch.Generator().manual_seed(s))) for s in range(60)}
    assert draws == {0, 1}


def test_bad_cached_calls_are_refused():
    m = _model("dsa", "mqa")
    other = _model("dsa", "mqa")
    tok = torch.zeros(2, 4, dtype=torch.long)
    cache = m.init_cache(2, 6)
    with pytest.raises(ValueError, match="max_len"):
        m.init_cache(2, 65)
    with pytest.raises(ValueError, match="batch_size"):
        m.init_cache(0, 6)
    with pytest.raises(ValueError, match="batch size"):
        m(torch.zeros(3, 4, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="another model"):
        other(tok, cache=cache)
    with pytest.raises(TypeError, match="cache"):
        m(tok, cache={"k": 1})
    with pytest.raises(ValueError, match="lengths"):
        m(tok, cache=cache, lengths=torch.tensor([5, 1]))
    with pytest.raises(ValueError, match="lengths"):
        m(tok, lengths=torch.tensor([4, 4]))
    with pytest.raises(ValueError, match="training-time"):
        m(tok, cache=cache, indexer_loss="dense")
    m(tok, cache=cache)
    with pytest.raises(ValueError, match="max_len=6"):  # 4 cached + 4 new > 6: refused before any write
        m(tok, cache=cache)
    assert cache.lengths.tolist() == [4, 4]
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(m, [[1, 2]], 63)
    with pytest.raises(ValueError, match="top_p"):
        generate(m, [[1, 2]], 3, top_p=0)
    with pytest.raises(ValueError, match="temperature"):
        generate(m, [[1, 2]], 3, temperature=-1)
    with pytest.raises(ValueError, match="prompt"):
        generate(m, [[]], 3)
    with pytest.raises(ValueError, match="vocab_size"):
        generate(m, [[1, 97]], 3)
    with pytest.raises(ValueError, match="k_policy"), m.selection_override(k_policy="mass"):
        m(tok[:, :1], cache=cache)


def test_cache_layout_and_row_bytes():
    for layout, kv in (("mqa", 2 * 12), ("gqa", 2 * 2 * 12), ("mla", 24 + 8)):
        m = _model("dsa", layout)
        c = m.init_cache(2, 10)
        assert cache_row_bytes(m.cfg, 4) == {"kv": kv * 4, "indexer": 16 * 4}
        assert c.nbytes() == 2 * 2 * 10 * (kv + 16) * 4  # layers x batch x rows x values x bytes
        fp8 = _model("dsa-fp8", layout)
        c8 = fp8.init_cache(2, 10)
        assert cache_row_bytes(fp8.cfg, 4) == {"kv": kv * 4, "indexer": 16 + 4}  # e4m3 values + an fp32 scale
        assert c8.nbytes() == 2 * 2 * 10 * (kv * 4 + 16 + 4)
        assert c8.layers[0].k_idx.dtype == torch.float8_e4m3fn and c8.layers[0].k_idx_scale.shape == (2, 10)
    assert cache_row_bytes(_model("dense", "mla").cfg)["indexer"] == 0
    assert cache_row_bytes(ModelConfig(attention="dsa", indexer_dim=128, indexer_precision="fp8"))["indexer"] == 132


def test_fp8_cache_stores_the_keys_as_the_full_forward_quantizes_them(gen):
    """Keys written a few tokens at a time, at scattered positions, hold the e4m3 values and scales that
    quantizing the whole sequence at once gives (rotation and scale are per token); the bf16 copy (GPUs without
    e4m3) holds the same values."""
    layer = _model("dsa-fp8", "mqa").layers[0].attn
    k_idx = torch.randn(2, 11, 16, generator=gen) * torch.rand(2, 11, 1, generator=gen) * 5
    want_vals, want_scale = quantize_indexer_keys(k_idx)
    cache = layer.init_cache(2, 13, torch.float32, torch.device("cpu"))
    copy = layer.init_cache(2, 13, torch.float32, torch.device("cpu"))
    copy.k_idx = copy.k_idx.bfloat16()
    for c0, c1 in ((0, 4), (4, 5), (5, 9), (9, 11)):
        pos = torch.arange(c0, c1).expand(2, -1)
        kv = torch.zeros(2, 1, c1 - c0, 12)
        for c in (cache, copy):
            c.write(kv, kv, pos, k_idx[:, c0:c1])
    for c in (cache, copy):
        vals, scale = c.indexer_keys(11)
        assert torch.equal(vals.float(), want_vals.float()) and torch.equal(scale, want_scale)
    assert torch.equal(cache.k_idx[:, 11:].float(), torch.zeros(2, 2, 16))  # rows not written stay empty
