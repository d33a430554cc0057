"""dsa: a study of DeepSeek Sparse Attention (lightning indexer + top-k + sparse attention).

Tensor layout convention used across the package:
- hidden states ``x``: (B, L, D)
- attention queries/keys/values: (B, H, L, d) like ``torch.nn.functional.scaled_dot_product_attention``
- indexer queries ``q_idx``: (B, L, H_I, d_I), indexer keys ``k_idx``: (B, L, d_I), head weights ``w``: (B, L, H_I)
- selected indices ``idx``: (B, L, K) int64, -1 marks an unused slot; ``valid``: (B, L, K) bool
"""

__version__ = "0.1.0"
