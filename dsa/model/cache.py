"""The model's inference cache: one :class:`dsa.layers.cache.LayerCache` per layer and each sequence's length.

Sequences of different lengths share one batch: ``lengths[b]`` rows of sequence b are filled, and the next
call writes its tokens from there (right-padding: a prompt batch is padded at the end and the model is told
each sequence's own count of new tokens; see :meth:`dsa.model.TransformerLM.forward`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dsa.layers.cache import LayerCache


@dataclass
class ModelCache:
    layers: list[LayerCache]
    lengths: torch.Tensor  # (B,) int64: rows filled per sequence
    max_len: int
    owner: int  # id() of the model that made it: a cache fits only its own model's weights
    attention: str  # 'dense' | 'dsa'

    @property
    def batch_size(self) -> int:
        return int(self.lengths.shape[0])

    def nbytes(self) -> int:
        """Bytes held by every layer's cache (keys, values, indexer keys and their FP8 scales), at max_len."""
        return sum(c.nbytes() for c in self.layers)

    def reset(self) -> None:
        """Forget every sequence (the rows are overwritten by the next prompt)."""
        self.lengths.zero_()
