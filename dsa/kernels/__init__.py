"""Triton kernels for DeepSeek Sparse Attention (with plain-PyTorch fallbacks on CPU).

- :func:`sparse_attention`: attention over the selected K/V rows, forward + backward (GQA, -1 padding).
- :func:`indexer_topk_fast`: causal indexer top-k without an L x L score tensor.
- :func:`indexer_scores_at`: indexer scores at the selected positions, differentiable (for the KL loss).

The Triton path runs on CUDA tensors, or on CPU when ``TRITON_INTERPRET=1`` is set before the first call.
"""

from ._common import HAS_TRITON, TRITON_IMPORT_ERROR, interpret_mode, use_triton
from .indexer import indexer_scores_at, indexer_scores_at_reference, indexer_topk_fast
from .sparse_attention import sparse_attention

__all__ = [
    "HAS_TRITON",
    "TRITON_IMPORT_ERROR",
    "indexer_scores_at",
    "indexer_scores_at_reference",
    "indexer_topk_fast",
    "interpret_mode",
    "sparse_attention",
    "use_triton",
]
