"""Drop-in layers: attention (dense or DSA; MHA, GQA, MQA, MLA), the lightning indexer, RMSNorm."""

from .attention import INDEXER_LOSSES, AttentionAux, DenseAttention, DSAAttention
from .config import AttentionConfig, MLAConfig, SparseConfig
from .indexer import IndexerConfig, LightningIndexer
from .norm import RMSNorm

__all__ = [
    "INDEXER_LOSSES",
    "AttentionAux",
    "AttentionConfig",
    "DSAAttention",
    "DenseAttention",
    "IndexerConfig",
    "LightningIndexer",
    "MLAConfig",
    "RMSNorm",
    "SparseConfig",
]
