"""Triton kernels of DeepSeek Sparse Attention. Triton only: the public ops (:mod:`dsa.ops`) check the
inputs and choose between these kernels and the plain-PyTorch references, which the kernels never import.

- :mod:`.sparse_attention`: attention over the selected K/V rows, forward + backward (GQA/MQA, -1 padding).
- :mod:`.indexer_chunked`: causal indexer top-k through stored score chunks and the radix top-k.
- :mod:`.indexer`: per-query-k indexer top-k by a threshold search; indexer scores at selected positions
  with their backward (the KL loss).
- :mod:`.radix_topk`: top-k positions of each row of precomputed scores.
- :mod:`.decode`: the decode step: split-K attention of new queries over selected (or all) cached rows, and
  the indexer scores of new queries over the cached indexer keys (then the radix top-k).
- :mod:`.quantize`: the FP8 indexer's Hadamard rotation and per-row e4m3 quantization in one pass.

The Triton path runs on CUDA tensors, or on CPU when ``TRITON_INTERPRET=1`` is set before the first call.
"""

from ._common import HAS_TRITON, TRITON_IMPORT_ERROR

__all__ = ["HAS_TRITON", "TRITON_IMPORT_ERROR"]
