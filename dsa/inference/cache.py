"""The inference caches (defined with the layer and the model that fill them) and what one cached token costs.

- :class:`LayerCache`: one layer's keys, values (MLA: the latent rows only) and indexer keys;
- :class:`ModelCache`: every layer's cache and each sequence's length (right-padded batches).
"""

from __future__ import annotations

from dsa.layers.cache import LayerCache
from dsa.model.cache import ModelCache
from dsa.model.config import ModelConfig
from dsa.ops.quantize import indexer_key_bytes

__all__ = ["LayerCache", "ModelCache", "cache_row_bytes"]


def cache_row_bytes(cfg: ModelConfig, dtype_bytes: int = 2) -> dict[str, int]:
    """Bytes one cached token holds per layer: {'kv': keys + values (MLA: kv_rank + rope_dim), 'indexer': the
    indexer key (DSA; 0 for dense)}, at ``dtype_bytes`` per value; the FP8 indexer (``indexer_precision='fp8'``)
    at 1 byte per value + its 4-byte fp32 scale whatever ``dtype_bytes`` (132 bytes at d_I = 128; a GPU
    without e4m3 holds bf16 copies instead, :func:`dsa.ops.quantize.fp8_cache_dtype`)."""
    if cfg.mla is not None:
        kv = cfg.mla.kv_rank + cfg.mla.rope_dim
    else:
        acfg = cfg.attention_config()
        kv = acfg.kv_heads * (acfg.qk_dim + acfg.v_dim)
    idx = indexer_key_bytes(cfg.indexer_dim, cfg.indexer_precision == "fp8", dtype_bytes) \
        if cfg.attention == "dsa" else 0
    return {"kv": kv * dtype_bytes, "indexer": idx}
