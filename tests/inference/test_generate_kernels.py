"""Generation through the Triton decode kernels (the CPU interpreter without CUDA) equals generation through
the references: the same greedy tokens and selections, for dense and DSA at a small odd size."""

from __future__ import annotations

import pytest
import torch
from ops.triton_interpreter import interpreter_for_module  # tests/ops: the one interpreter switch

_interpreter_for_this_module_only = interpreter_for_module()  # before triton is imported

pytest.importorskip("triton", reason="triton is not importable: the Triton kernels cannot be tested")

from dsa.inference import generate  # noqa: E402
from dsa.model import ModelConfig, TransformerLM  # noqa: E402

DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("attention", ["dense", "dsa", "dsa-fp8"])
def test_generation_through_the_kernels_matches_the_references(attention, gen):
    """dsa-fp8: the FP8 indexer, its cache in e4m3 (the Triton decode indexer on e4m3 operands)."""
    kw = {"vocab_size": 53, "d_model": 40, "n_layers": 2, "n_heads": 5, "n_kv_heads": 1, "max_seq_len": 48,
          "attention": attention.removesuffix("-fp8"), "top_k": 5, "indexer_dim": 16, "indexer_rope_dim": 8,
          "indexer_precision": "fp8" if attention.endswith("fp8") else "bf16"}
    ref = TransformerLM(ModelConfig(impl="reference", **kw), seed=4).eval().to(DEV)
    tri = TransformerLM(ModelConfig(impl="triton", **kw), seed=4).eval().to(DEV)
    prompts = [torch.randint(0, 53, (n,), generator=gen).tolist() for n in (7, 3)]
    a = generate(ref, prompts, 9, temperature=0, record_selection=attention != "dense")
    b = generate(tri, prompts, 9, temperature=0, record_selection=attention != "dense")
    assert a.tokens == b.tokens
    for sa, sb in zip(a.selections, b.selections):
        for la, lb in zip(sa, sb):
            assert torch.equal(la.sort(-1).values, lb.sort(-1).values)
