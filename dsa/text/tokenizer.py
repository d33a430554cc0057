"""Tokenizers for the corpus: a byte-level BPE (HF ``tokenizers``) and a 256-symbol byte fallback.

Both expose the same small interface (:class:`Tokenizer`): ``encode(str) -> list[int]``,
``decode(list[int]) -> str``, ``vocab_size``, ``name``, ``save(path)``.

The BPE is *byte-level* (GPT-2 style): every string is representable, so ``decode(encode(s)) == s``
for any text, and there is no unknown token. It is trained on the TRAIN split only (the caller passes
the training documents), so the validation text has no say in the vocabulary.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:  # only for annotations: the package must import without `tokenizers` installed
    import tokenizers

logger = logging.getLogger(__name__)

TOKENIZER_KINDS = ("bpe", "byte")

# Document separator. In the BPE it is a special token (one id, never produced by merges, never split);
# the byte tokenizer has no spare id among its 256, so there it is just its 13 UTF-8 bytes.
EOT = "<|endoftext|>"

BYTE_VOCAB_SIZE = 256
# Smallest useful BPE vocabulary: the 256 byte symbols + the EOT special token + at least one merge.
MIN_BPE_VOCAB_SIZE = BYTE_VOCAB_SIZE + 2


@runtime_checkable
class Tokenizer(Protocol):
    """What the rest of the package relies on."""

    name: str

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def save(self, path: Path) -> None: ...


def bpe_available() -> bool:
    """True when the HF ``tokenizers`` package can be imported."""
    try:
        import tokenizers  # noqa: F401
    except ImportError:
        return False
    return True


def _as_int_list(ids: Sequence[int]) -> list[int]:
    # Accept lists, tuples, numpy arrays and 1-D torch tensors alike (tensor.tolist() gives ints).
    tolist = getattr(ids, "tolist", None)
    return [int(i) for i in (tolist() if callable(tolist) else ids)]


class ByteTokenizer:
    """UTF-8 bytes as tokens: ids 0..255, vocab 256, nothing to train.

    decode() replaces byte sequences that are not valid UTF-8 (e.g. a window cut in the middle of a
    multi-byte character) with U+FFFD rather than raising: a sampled window must always be printable.
    """

    name = "byte"

    @property
    def vocab_size(self) -> int:
        return BYTE_VOCAB_SIZE

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        ids = _as_int_list(ids)
        bad = [i for i in ids if not 0 <= i < BYTE_VOCAB_SIZE]
        if bad:
            raise ValueError(f"ids must be in [0, {BYTE_VOCAB_SIZE}), got e.g. {bad[0]}")
        return bytes(ids).decode("utf-8", errors="replace")

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def save(self, path: Path) -> None:
        """Nothing to save (the byte tokenizer has no state); kept for interface symmetry."""


class BPETokenizer:
    """Byte-level BPE from HF ``tokenizers``; ``EOT`` is a special token (id 0)."""

    name = "bpe"

    def __init__(self, tok: tokenizers.Tokenizer) -> None:
        self._tok = tok

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> "BPETokenizer":
        """Train on ``texts`` (the training documents only). Deterministic for a given input.

        The result may have fewer than ``vocab_size`` entries when the text is too small to support
        that many merges; read :attr:`vocab_size` for the real size.
        """
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < MIN_BPE_VOCAB_SIZE:
            raise ValueError(f"vocab_size must be an int >= {MIN_BPE_VOCAB_SIZE} for bpe, got {vocab_size!r}")
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers

        tok = HFTokenizer(models.BPE())
        # add_prefix_space=False: encoding must not invent a leading space, or decode(encode(s)) != s.
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[EOT],
            # Seed the alphabet with all 256 byte symbols so bytes unseen in training stay encodable.
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok)

    @classmethod
    def load(cls, path: Path) -> "BPETokenizer":
        from tokenizers import Tokenizer as HFTokenizer

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {path}")
        return cls(HFTokenizer.from_file(str(path)))

    def save(self, path: Path) -> None:
        self._tok.save(str(path))

    def to_json(self) -> str:
        return self._tok.to_str()

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def eot_id(self) -> int:
        return self._tok.token_to_id(EOT)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        # Rust-side parallelism over documents: the whole corpus encodes in a couple of seconds.
        return [e.ids for e in self._tok.encode_batch(list(texts))]

    def decode(self, ids: Sequence[int]) -> str:
        # skip_special_tokens=False: keep EOT in the text so document boundaries stay visible and
        # decode(encode(s)) == s also holds for text that contains the separator.
        return self._tok.decode(_as_int_list(ids), skip_special_tokens=False)


def resolve_tokenizer_kind(kind: str) -> str:
    """Validate ``kind`` and apply the fallback: 'bpe' without ``tokenizers`` installed -> 'byte' (warns)."""
    if kind not in TOKENIZER_KINDS:
        raise ValueError(f"tokenizer must be one of {TOKENIZER_KINDS}, got {kind!r}")
    if kind == "bpe" and not bpe_available():
        msg = "tokenizer='bpe' needs the 'tokenizers' package, which is not importable; falling back to 'byte'"
        warnings.warn(msg, RuntimeWarning, stacklevel=3)
        logger.warning(msg)
        return "byte"
    return kind


def build_tokenizer(kind: str, train_texts: Iterable[str], vocab_size: int) -> ByteTokenizer | BPETokenizer:
    """A ready tokenizer of ``kind`` ('bpe' is trained on ``train_texts``; 'byte' ignores both args).

    Applies the fallback of :func:`resolve_tokenizer_kind`; check ``.name`` for the kind obtained.
    """
    kind = resolve_tokenizer_kind(kind)
    if kind == "byte":
        return ByteTokenizer()
    return BPETokenizer.train(train_texts, vocab_size)


def load_tokenizer(kind: str, path: Path | None = None) -> ByteTokenizer | BPETokenizer:
    """Load a saved tokenizer ('bpe' needs ``path`` to its JSON; 'byte' needs nothing)."""
    if kind not in TOKENIZER_KINDS:
        raise ValueError(f"tokenizer must be one of {TOKENIZER_KINDS}, got {kind!r}")
    if kind == "byte":
        return ByteTokenizer()
    if path is None:
        raise ValueError("path is required to load a 'bpe' tokenizer")
    return BPETokenizer.load(path)
