"""Training: a few CPU steps lower the loss, the warm-up raises indexer recall, one seed -> identical
metrics, the leaky variant's advantage vanishes when the causal guard is put back, bad config errors."""

import json

import pytest
import torch

from dsa.train.cli import train_main as main
from dsa.train.trainer import TrainConfig, train

VOCAB = 32
SEQ = 48


class PatternSampler:
    """Random tokens at even positions; each odd position is a fixed function of the token ``lag`` places back, so
    attention must learn to look there (peaked attention for the indexer to match). Batches depend only on
    (seed, step)."""

    def __init__(self, seed: int, batch: int = 8, lag: int = 4) -> None:
        self.seed, self.batch_size, self.lag = seed, batch, lag

    def batch(self, step: int):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        x = torch.randint(0, VOCAB, (self.batch_size, SEQ + 1), generator=g)
        for t in range(self.lag + 1, SEQ + 1, 2):
            x[:, t] = (3 * x[:, t - self.lag] + 1) % VOCAB
        return x[:, :-1], x[:, 1:]


def _data(lag: int = 4):
    val = [PatternSampler(99, lag=lag).batch(i) for i in range(2)]
    return VOCAB, PatternSampler(0, lag=lag), PatternSampler(1, lag=lag), val, {"kind": "test", "lag": lag}


def _cfg(**kw):
    base = dict(seq_len=SEQ, top_k=12, batch_size=8, steps=40, d_model=32, n_layers=2, n_heads=4, indexer_heads=2,
                indexer_dim=16, indexer_rope_dim=8, lr=1e-2, lr_warmup_steps=5, eval_every=20, eval_batches=2,
                out="", progress=False)
    base.update(kw)
    return TrainConfig(**base)


def _strip_times(history):
    keys = ("time_per_step_s", "tokens_per_s", "peak_mem_mb", "peak_rss_mb")
    return [{k: v for k, v in h.items() if k not in keys} for h in history]


@pytest.mark.parametrize("attention,recipe", [("dense", "deepseek"), ("dsa", "deepseek"), ("dsa", "scratch")])
def test_a_few_steps_lower_the_loss(attention, recipe):
    rec = train(_cfg(attention=attention, recipe=recipe), data=_data(lag=1))
    h = rec["history"]
    assert h[-1]["val_loss"] < h[0]["val_loss"] - 0.3, [e["val_loss"] for e in h]
    assert rec["final"]["time_per_step_s"] > 0 and rec["final"]["tokens_per_s"] > 0


def test_warmup_raises_indexer_recall():
    cfg = _cfg(attention="dsa", steps=60, dense_steps=60, warmup_steps=60, indexer_lr=1e-2, top_k=6, eval_every=200)
    rec = train(cfg, data=_data())
    before = [e for e in rec["history"] if e["phase"] == "dense"][-1]["recall"]
    after = [e for e in rec["history"] if e["phase"] == "warmup"][-1]["recall"]
    assert after > before + 0.05, (before, after)


def test_warmup_leaves_the_main_model_untouched():
    cfg = _cfg(attention="dsa", steps=10, dense_steps=10, warmup_steps=10, eval_every=100)
    rec = train(cfg, data=_data())
    h = rec["history"]
    dense_end = [e for e in h if e["phase"] == "dense"][-1]
    warm_end = [e for e in h if e["phase"] == "warmup"][-1]
    assert warm_end["val_loss"] == dense_end["val_loss"]  # dense-mode eval of a frozen main model


def test_one_seed_gives_identical_metrics():
    a = train(_cfg(attention="dsa", steps=20), data=_data())
    b = train(_cfg(attention="dsa", steps=20), data=_data())
    assert _strip_times(a["history"]) == _strip_times(b["history"])
    c = train(_cfg(attention="dsa", steps=20, seed=1), data=_data())
    assert _strip_times(c["history"]) != _strip_times(a["history"])


def test_dense_and_dsa_see_the_same_batches_and_start_equal():
    d = train(_cfg(attention="dense", steps=10), data=_data())
    s = train(_cfg(attention="dsa", steps=10, dense_steps=10, warmup_steps=0, indexer_kl=False), data=_data())
    # a DSA run kept dense for all its LM steps is the dense run, step for step
    assert [e["val_loss"] for e in d["history"]] == [e["val_loss"] for e in s["history"]]


def test_leaky_run_records_its_causal_eval():
    rec = train(_cfg(attention="dsa", recipe="scratch", leak_future=True, steps=20), data=_data())
    f = rec["final"]
    assert "val_loss_causal_eval" in f and f["val_loss_causal_eval"] != f["val_loss"]


def test_run_json_has_provenance(tmp_path):
    out = tmp_path / "run.json"
    train(_cfg(attention="dsa", steps=8, out=str(out)), data=_data())
    rec = json.loads(out.read_text())
    for key in ("git_commit", "torch_version", "device", "date"):
        assert key in rec["provenance"]
    assert rec["config"]["attention"] == "dsa" and rec["seed"] == 0
    assert rec["params"]["indexer"] > 0 and len(rec["history"]) >= 2


@pytest.mark.parametrize(
    "kw,match",
    [({"top_k": 49}, "top_k"), ({"top_k": 0}, "top_k"), ({"recipe": "magic"}, "recipe"),
     ({"steps": 0}, "steps"), ({"attention": "dsa", "dense_steps": 50}, "dense_steps"),
     ({"attention": "dsa", "recipe": "scratch", "warmup_steps": 5}, "indexer_kl"),
     ({"precision": "fp8"}, "precision")],
)
def test_bad_train_config_names_the_argument(kw, match):
    with pytest.raises(ValueError, match=match):
        _cfg(**kw)


def test_cli_rejects_unknown_flags_and_bad_values(capsys):
    with pytest.raises(SystemExit):
        main(["--no-such-flag", "1"])
    assert "--no-such-flag" in capsys.readouterr().err
    for argv, named in ((["--attention", "dsa", "--seq-len", "16", "--top-k", "32"], "top_k"),
                        (["--attention", "nope"], "--attention")):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2 and named in capsys.readouterr().err


def test_sparse_eval_records_keys_per_query():
    """mean_k: the keys each query attends to, per layer; fixed k counts min(k, t+1) for query t."""
    rec = train(_cfg(attention="dsa", recipe="scratch", steps=4, eval_every=4), data=_data())
    f = rec["final"]
    want = float(torch.minimum(torch.full((SEQ,), 12), torch.arange(SEQ) + 1).float().mean())
    assert f["mean_k"] == pytest.approx(want)
    assert len(f["mean_k_by_layer"]) == 2
    adaptive = train(_cfg(attention="dsa", recipe="scratch", steps=4, eval_every=4, k_policy="mass", k_mass=0.5),
                     data=_data())
    assert 1.0 <= adaptive["final"]["mean_k"] < want
