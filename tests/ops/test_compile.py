"""torch.compile(fullgraph=True) on the fixed-k Triton path: the DSA layer traces as one graph (the kernels
are torch.library custom ops; no host synchronisation), and gives the eager result and gradients.

Without CUDA the kernels run in Triton's CPU interpreter and the graph is compiled with the ``aot_eager``
backend (Dynamo + AOTAutograd, no code generation): that is where a graph break or a host read would fail.
With CUDA the same test compiles with inductor.
"""

from __future__ import annotations

import pytest
import torch
from triton_interpreter import interpreter_for_module

_interpreter_for_this_module_only = interpreter_for_module()  # before triton is imported


pytest.importorskip("triton", reason="triton is not importable: the Triton path cannot be compiled")

from dsa.layers import AttentionConfig, DSAAttention, SparseConfig  # noqa: E402

CUDA = torch.cuda.is_available()
DEV = torch.device("cuda" if CUDA else "cpu")
BACKEND = "inductor" if CUDA else "aot_eager"


@pytest.mark.parametrize("precision", ["bf16", "fp8"])
def test_dsa_layer_compiles_fullgraph_and_matches_eager(gen, precision):
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
    torch._dynamo.reset()
    layer = DSAAttention(AttentionConfig(d_model=32, n_heads=4, n_kv_heads=1, head_dim=16, max_seq_len=64,
                                         impl="triton"),
                         SparseConfig(top_k=9, indexer_heads=2, indexer_dim=16, indexer_rope_dim=8,
                                      indexer_precision=precision)).to(DEV)
    x = torch.randn(2, 37, 32, generator=gen).to(DEV)

    def step(layer, x):
        out, aux = layer(x, indexer_loss="sparse")
        return out, aux.indexer_kl, aux.selection

    compiled = torch.compile(step, fullgraph=True, backend=BACKEND)
    got = compiled(layer, x)
    (got[0].square().sum() + got[1]).backward()
    g_got = [p.grad.clone() for p in layer.parameters()]
    layer.zero_grad()
    want = step(layer, x)
    (want[0].square().sum() + want[1]).backward()
    assert torch.equal(got[2], want[2])  # the same selection
    torch.testing.assert_close(got[0], want[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got[1], want[1], rtol=1e-4, atol=1e-6)
    for a, p in zip(g_got, layer.parameters()):
        torch.testing.assert_close(a, p.grad, rtol=1e-3, atol=1e-5)
