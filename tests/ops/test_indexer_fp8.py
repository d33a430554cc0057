"""The FP8 indexer (dsa.ops.quantize, precision='fp8'): the Hadamard rotation, the quantization, the reference
formula, the Triton score pass and top-k against it (fp8 tl.dot in Triton's CPU interpreter: triton 3.9 runs it;
the bf16 operands that GPUs without FP8 get, too), the selection's recall against bf16, the layer option, and
the indexer KL loss's kernels at 64 x 128."""

import pytest
import torch
from triton_interpreter import interpreter_for_module

_interpreter_for_this_module_only = interpreter_for_module()  # before triton is imported

from dsa import ops  # noqa: E402
from dsa.bench.indexer import random_indexer_inputs, structured_indexer_inputs  # noqa: E402
from dsa.ops.indexer import indexer_scores_reference  # noqa: E402
from dsa.ops.quantize import FP8_DTYPE, FP8_MAX, hadamard_transform, quantize_indexer  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _cpu_inputs(gen, b, l, h, d):
    q, k = torch.randn(b, l, h, d, generator=gen), torch.randn(b, l, d, generator=gen)
    return q, k, torch.randn(b, l, h, generator=gen)


def _sylvester(d: int) -> torch.Tensor:
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < d:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h / d**0.5


@pytest.mark.parametrize("d", [1, 2, 16, 128])
def test_hadamard_is_the_normalised_sylvester_matrix_and_orthogonal(gen, d):
    x = torch.randn(3, 5, d, generator=gen, dtype=torch.float64)
    y = hadamard_transform(x)
    torch.testing.assert_close(y, x @ _sylvester(d), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(hadamard_transform(y), x, rtol=1e-6, atol=1e-6)  # H is its own inverse


def test_rotation_leaves_bf16_scores_unchanged_up_to_rounding(gen):
    """q . k is invariant under one orthogonal map of both: fp32 scores agree to fp32 rounding, bf16 inputs
    rotated in bf16 to bf16 rounding (the rotated values are rounded once more)."""
    b, l, h, d = 2, 19, 5, 64
    q, k, w = _cpu_inputs(gen, b, l, h, d)
    s = indexer_scores_reference(q, k, w)
    fin = torch.isfinite(s)
    s_rot = indexer_scores_reference(hadamard_transform(q), hadamard_transform(k), w)
    assert (s_rot[fin] - s[fin]).abs().max() <= 1e-4 * s[fin].abs().max()
    qb, kb = q.bfloat16(), k.bfloat16()
    s_b = indexer_scores_reference(qb, kb, w)
    s_brot = indexer_scores_reference(hadamard_transform(qb), hadamard_transform(kb), w)
    assert (s_brot[fin] - s_b[fin]).abs().max() <= 2e-2 * s_b[fin].abs().max()


def test_hadamard_refuses_a_non_power_of_two_dim():
    with pytest.raises(ValueError, match="power-of-two"):
        hadamard_transform(torch.zeros(2, 24))


def test_quantize_maps_each_rows_amax_to_448_and_folds_the_query_scale_into_w(gen):
    b, l, h, d = 2, 11, 3, 32
    q, k, w = _cpu_inputs(gen, b, l, h, d)
    z = quantize_indexer(q, k, w)
    assert z.q.dtype == z.k.dtype == FP8_DTYPE and z.w.dtype == z.k_scale.dtype == torch.float32
    assert z.q.shape == q.shape and z.k.shape == k.shape and z.w.shape == w.shape and z.k_scale.shape == (b, l)
    qr, kr = hadamard_transform(q), hadamard_transform(k)
    q_scale = qr.abs().amax(-1) / FP8_MAX
    torch.testing.assert_close(z.k_scale, kr.abs().amax(-1) / FP8_MAX)
    torch.testing.assert_close(z.w, w * q_scale)
    assert torch.equal(z.q.float().abs().amax(-1), torch.full((b, l, h), FP8_MAX))
    # e4m3 keeps 3 mantissa bits: every value within 2^-4 relative (normal range) or half the smallest step
    deq = z.k.float() * z.k_scale[..., None]
    assert ((deq - kr).abs() <= kr.abs() * 2**-4 + z.k_scale[..., None] * 2**-9).all()


def test_quantize_in_row_steps_equals_at_once_and_rotate_false_skips_the_rotation(gen, monkeypatch):
    import dsa.ops.quantize as qz  # noqa: PLC0415

    q, k, w = _cpu_inputs(gen, 2, 13, 3, 32)
    whole = quantize_indexer(q, k, w)
    monkeypatch.setattr(qz, "_ROWS_ELEMS", 32 * 5)  # 5 rows a step: steps that do not divide the rows
    for a, b in zip(quantize_indexer(q, k, w), whole):
        assert torch.equal(a.float(), b.float())
    plain = quantize_indexer(q, k, w, rotate=False)
    torch.testing.assert_close(plain.k_scale, k.abs().amax(-1) / FP8_MAX)


def test_zero_rows_quantize_to_zeros_not_nan():
    z = quantize_indexer(torch.zeros(1, 3, 2, 16), torch.zeros(1, 3, 16), torch.ones(1, 3, 2))
    assert torch.isfinite(z.k_scale).all() and (z.q.float() == 0).all() and torch.isfinite(z.w).all()


def test_fp8_reference_is_the_formula_on_the_e4m3_values(gen):
    b, l, h, d = 1, 9, 3, 16
    q, k, w = _cpu_inputs(gen, b, l, h, d)
    z = quantize_indexer(q, k, w)
    got = ops.indexer_scores(q, k, w, causal=False, precision="fp8", impl="reference")
    q8, k8 = z.q.double(), z.k.double()
    want = torch.einsum("bth,btsh->bts", z.w.double(),
                        torch.einsum("bthd,bsd->btsh", q8, k8).relu()) * z.k_scale.double()[:, None, :]
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-6)


def test_precision_is_checked_by_name(gen):
    q, k, w = torch.randn(1, 4, 2, 16), torch.randn(1, 4, 16), torch.randn(1, 4, 2)
    with pytest.raises(ValueError, match="precision"):
        ops.indexer_topk(q, k, w, 2, precision="fp16")
    with pytest.raises(ValueError, match="precision"):
        ops.indexer_scores(q, k, w, precision="int8")
    with pytest.raises(ValueError, match="power-of-two"):
        ops.indexer_topk(torch.randn(1, 4, 2, 24), torch.randn(1, 4, 24), w, 2, precision="fp8")


def test_fp8_triton_takes_one_k_and_says_so(gen):
    q, k, w = torch.randn(1, 8, 2, 16), torch.randn(1, 8, 16), torch.randn(1, 8, 2)
    k_t = torch.full((8,), 3)
    with pytest.raises(ValueError, match="FP8 Triton top-k takes one k"):
        ops.indexer_topk(q, k, w, k_t, precision="fp8", impl="triton")
    got = ops.indexer_topk(q, k, w, k_t, precision="fp8")  # auto: the reference takes a per-query k
    assert torch.equal(got, ops.indexer_topk(q, k, w, 3, precision="fp8", impl="reference"))


def _odd_inputs(gen, b, l, h, d):
    return (torch.randn(b, l, h, d, generator=gen).to(DEV), torch.randn(b, l, d, generator=gen).to(DEV),
            torch.randn(b, l, h, generator=gen).to(DEV))


@pytest.mark.parametrize("b,l,h,d", [(2, 37, 3, 16), (1, 45, 64, 128)])
def test_fp8_triton_scores_equal_the_reference(gen, b, l, h, d):
    """The score pass on e4m3 operands (a padded head count, d_I below the FP8 MMA's K of 32, and DeepSeek's
    64 x 128) equals the reference up to the accumulation: in the CPU interpreter, the fp32 summation order
    (1e-5 of the largest score); on a GPU, Hopper's FP8 tensor cores keep only ~14 bits of their accumulator
    (DeepSeek-V3 report, 3.3.2), so the error is bounded by 2^-11 of the sum of the absolute products that
    make each score (4x the 2^-13 of such an accumulator; a wrong kernel errs by the order of that sum)."""
    q, k, w = _odd_inputs(gen, b, l, h, d)
    ref = ops.indexer_scores(q, k, w, precision="fp8", impl="reference")
    got = ops.indexer_scores(q, k, w, precision="fp8", impl="triton")
    fin = torch.isfinite(ref)
    assert torch.equal(fin, torch.isfinite(got))
    err = (got[fin] - ref[fin]).abs()
    if torch.device(DEV).type == "cpu":
        assert err.max() <= 1e-5 * ref[fin].abs().max()
    else:
        z = quantize_indexer(q, k, w)
        mag = torch.einsum("bth,btsh->bts", z.w.double().abs(),
                           torch.einsum("bthd,bsd->btsh", z.q.double().abs(), z.k.double().abs()))
        bound = 2.0**-11 * (mag * z.k_scale.double()[:, None, :])[fin]
        assert (err.double() <= bound + 1e-6).all(), float((err.double() / bound.clamp(min=1e-30)).max())


@pytest.mark.parametrize("b,l,h,d,k", [(2, 41, 3, 16, 7), (1, 70, 64, 128, 20)])
def test_fp8_triton_topk_selects_the_reference_set(gen, b, l, h, d, k):
    """The FP8 chunked top-k (fp8 tl.dot in the interpreter) selects the reference's set of positions; with the
    bf16 copies of the e4m3 values (the path of GPUs without FP8) too."""
    from dsa.ops.kernels.indexer_chunked import indexer_topk_chunked  # noqa: PLC0415

    q, kk, w = _odd_inputs(gen, b, l, h, d)
    ref = ops.indexer_topk(q, kk, w, k, precision="fp8", impl="reference").sort(-1).values
    got = ops.indexer_topk(q, kk, w, k, precision="fp8", impl="triton").sort(-1).values
    # on a GPU, Hopper's FP8 accumulator may swap near-ties of the k-th score (its scores are checked against
    # the reference within a bound above): there the set is the top-k of the kernel's own scores
    own = ops.select_topk(ops.indexer_scores(q, kk, w, precision="fp8", impl="triton"), k, impl="reference") \
        .sort(-1).values if DEV == "cuda" else ref
    assert torch.equal(got, own.to(got.dtype))
    z = quantize_indexer(q, kk, w)
    via_bf16 = indexer_topk_chunked(z.q.bfloat16(), z.k.bfloat16(), z.w, k, k_scale=z.k_scale, chunk=32)
    assert torch.equal(via_bf16.sort(-1).values, ref)


@pytest.mark.parametrize("make", [random_indexer_inputs, structured_indexer_inputs])
def test_fp8_selection_keeps_the_bf16_selections_score_mass(gen, make):
    """FP8 keeps >= 0.99 of the bf16 selection's indexer mass (softmax of the bf16 scores) on average and
    >= 0.97 on every query. Measured at this size: mean 0.9995 / 0.99998 (random / structured), minimum 0.996 /
    0.9996: the margin is 20x the mean shortfall."""
    l, h, d, k = 256, 8, 64, 32
    q, kk, w = make(1, l, h, d, gen)
    ref = ops.indexer_topk(q, kk, w, k, impl="reference")
    fp8 = ops.indexer_topk(q, kk, w, k, precision="fp8", impl="reference")
    r = ops.selection_score_mass(q.float(), kk.float(), w.float(), fp8, ref)
    assert r["n_nontrivial"] == l - k
    assert r["mass_ratio"] >= 0.99 and r["mass_ratio_min"] >= 0.97, r
    same = ops.selection_score_mass(q.float(), kk.float(), w.float(), ref, ref)
    assert same["mass_ratio"] == pytest.approx(1.0) and same["overlap"] == 1.0


def test_selection_score_mass_counts_a_worse_selection_as_worse(gen):
    q, kk, w = random_indexer_inputs(1, 64, 4, 32, gen)
    ref = ops.indexer_topk(q, kk, w, 8, impl="reference")
    worst = ops.indexer_topk(q, kk, -w, 8, impl="reference")  # the lowest scores instead
    r = ops.selection_score_mass(q.float(), kk.float(), w.float(), worst, ref)
    assert r["mass_ratio"] < 0.9 and r["overlap"] < 0.5


def test_layer_runs_the_fp8_selection_and_the_kl_gradient_reaches_the_indexer(gen):
    from dsa.layers import AttentionConfig, DSAAttention, SparseConfig  # noqa: PLC0415

    cfg = AttentionConfig(d_model=32, n_heads=4, n_kv_heads=1, max_seq_len=64, impl="reference")
    layer = DSAAttention(cfg, SparseConfig(top_k=8, indexer_heads=2, indexer_dim=16, indexer_precision="fp8"))
    x = torch.randn(2, 23, 32, generator=gen)
    _, aux = layer(x, indexer_loss="sparse", keep_tensors=True)
    t = aux.tensors
    want = ops.indexer_topk(t["q_idx"], t["k_idx"], t["w"], 8, precision="fp8", impl="reference")
    assert torch.equal(aux.selection, want)
    aux.indexer_kl.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in layer.indexer.parameters())
    with pytest.raises(ValueError, match="indexer_precision"):
        SparseConfig(indexer_precision="fp4")
    with pytest.raises(ValueError, match="power-of-two"):
        SparseConfig(indexer_dim=48, indexer_precision="fp8")


def test_sparse_indexer_kl_kernels_at_64_by_128(gen):
    """The KL loss on the Triton path (scores at the selection, forward and backward) at DeepSeek's indexer
    size: loss and the gradients of q_idx, k_idx and w as the reference computes them."""
    b, h, l, d, hi, di, k = 1, 2, 29, 16, 64, 128, 7
    q, kk = torch.randn(b, h, l, d, generator=gen).to(DEV), torch.randn(b, 1, l, d, generator=gen).to(DEV)
    qi, ki, w = random_indexer_inputs(b, l, hi, di, gen, DEV, torch.float32)
    sel = ops.indexer_topk(qi, ki, w, k, impl="reference")
    outs = []
    for impl in ("reference", "triton"):
        leaves = [x.clone().requires_grad_() for x in (qi, ki, w)]
        loss = ops.sparse_indexer_kl(q, kk, *leaves, sel, impl=impl)
        loss.backward()
        outs.append((loss.detach(), *(x.grad for x in leaves)))
    for ref, got in zip(*outs):
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)


def test_topk_bytes_model_counts_one_row_read_and_short_rows():
    from dsa.ops.flops import topk_bytes, topk_bytes_per_row  # noqa: PLC0415

    short = topk_bytes_per_row(100, 2048)
    assert short["selection"] == 400 and short["row_read"] == 0
    row = topk_bytes_per_row(32768, 2048)
    assert row["row_read"] == row["one_read"] == 4 * 32768 and row["score_write"] == row["one_read"]
    assert row["selection"] == pytest.approx(sum(row[k] for k in ("sample_read", "row_read", "cand_write",
                                                                  "cand_read", "out_write")))
    # longer rows: the candidates (about k) shrink against the row, the selection tends to one read
    ratios = [topk_bytes(l, 2048)["selection_over_read"] for l in (16384, 65536, 131072)]
    assert ratios == sorted(ratios, reverse=True) and 1.0 < ratios[-1] < 2.0 < ratios[0]
    # fused: no score write, and the candidate lists cost less than a row from L = 32K on
    fused = [topk_bytes(l, 2048, fused=True) for l in (32768, 65536, 131072)]
    assert all(f["score_write"] == 0 for f in fused)
    assert [f["selection_over_read"] < 2.0 for f in fused] == [True] * 3 and fused[-1]["selection_over_read"] < 1


def test_the_op_runs_the_fused_selection_when_switched(gen, monkeypatch):
    import dsa.ops.kernels.registered as reg  # noqa: PLC0415

    q, kk, w = _odd_inputs(gen, 1, 90, 2, 16)
    want = ops.indexer_topk(q, kk, w, 9, precision="fp8", impl="triton")
    monkeypatch.setattr(reg, "SELECTION", "fused")
    assert torch.equal(ops.indexer_topk(q, kk, w, 9, precision="fp8", impl="triton"), want)


@pytest.mark.parametrize("precision", ["bf16", "fp8"])
def test_fused_topk_equals_the_chunked_one_without_storing_scores(gen, precision):
    """The selection fused into the score pass (sampled bracket, candidate lists, radix top-k over them) gives
    the chunked path's result exactly (positions and order), with fewer candidates than past positions."""
    from dsa.ops.kernels.indexer_chunked import indexer_topk_chunked  # noqa: PLC0415
    from dsa.ops.kernels.indexer_fused import indexer_topk_fused  # noqa: PLC0415

    q, kk, w = _odd_inputs(gen, 2, 150, 3, 16)
    z = quantize_indexer(q, kk, w) if precision == "fp8" else None
    args = (z.q, z.k, z.w) if z else (q, kk, w)
    ks = z.k_scale if z else None
    st = {}
    got = indexer_topk_fused(*args, 12, k_scale=ks, sample=16, band=16, chunk=64, stats=st)
    assert torch.equal(got, indexer_topk_chunked(*args, 12, k_scale=ks))
    assert st["sampled_rows"] > 0 and st["candidates_per_past"] < 0.9, st


def test_fused_topk_rows_whose_bracket_misses_or_overflows_are_selected_exactly(gen, monkeypatch):
    """A bracket set too high (fewer than k candidates) or a list longer than its slots: those rows are re-scored
    in full and selected exactly."""
    import dsa.ops.kernels.indexer_fused as fz  # noqa: PLC0415

    q, kk, w = _odd_inputs(gen, 1, 130, 2, 16)
    want = ops.indexer_topk(q, kk, w, 10, impl="reference").sort(-1).values
    monkeypatch.setattr(fz, "_margin", lambda r: -r)  # lo at the sample's 2nd best: too few candidates
    st = {}
    got = fz.indexer_topk_fused(q, kk, w, 10, sample=16, band=16, stats=st)
    assert st["fallback_rows"] > 0 and torch.equal(got.sort(-1).values, want)
    monkeypatch.undo()
    monkeypatch.setattr(fz, "candidate_slots", lambda *a: 64)  # every row with more than 64 candidates overflows
    got = fz.indexer_topk_fused(q, kk, w, 10, sample=16, band=16, stats=st)
    assert st["fallback_rows"] > 0 and torch.equal(got.sort(-1).values, want)
