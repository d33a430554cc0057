"""The language model built from the attention layers: its configuration and the decoder-only LM."""

from .config import ATTENTION_KINDS, ModelConfig
from .lm import TransformerLM

__all__ = ["ATTENTION_KINDS", "ModelConfig", "TransformerLM"]
