"""The language model built from the attention layers: its configuration, the decoder-only LM and its
inference cache."""

from .cache import ModelCache
from .config import ATTENTION_KINDS, ModelConfig
from .lm import TransformerLM

__all__ = ["ATTENTION_KINDS", "ModelCache", "ModelConfig", "TransformerLM"]
