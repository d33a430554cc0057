"""Inference: prefill and decode with K/V and indexer caches, and generation on top.

``cache = model.init_cache(batch_size, max_len)``; ``model(tokens, cache=cache).logits`` appends the new
tokens' rows and returns their logits (a prompt first, then one token at a time, or several);
:func:`generate` samples from a prompt. The cache classes live with the layer and the model that fill them
(tiers: layers < model < inference) and are re-exported here (:mod:`dsa.inference.cache`).
:mod:`dsa.inference.export`: a model (dense or DSA) to ONNX through the reference ops, checked on onnxruntime
(``python -m dsa.inference.export --checkpoint CKPT --output model.onnx``; needs the ``onnx`` extra).
"""

from .cache import LayerCache, ModelCache, cache_row_bytes
from .generate import Generation, generate, sample_next

__all__ = ["Generation", "LayerCache", "ModelCache", "cache_row_bytes", "generate", "sample_next"]
