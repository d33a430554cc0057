"""Long-context experiments: task streams, the evaluations' counts against a hand-built model, the arms'
order and design factors, the recipe arms (which need TrainConfig.init_from)."""


import pytest
import torch

from dsa.text.synthetic import (
    IGNORE_INDEX,
    OffsetSampler,
    SyntheticConfig,
    SyntheticSampler,
    cut_relevant,
    make_recall_batch,
)
from dsa.train.experiments import (
    get_experiment,
    long_context_recipe,
    long_context_sparse,
    needle_distances,
    recipe_arms,
)
from dsa.train.long_context import (
    DISTANCE_BUCKETS,
    design_of,
    distance_bucket,
    order_arms,
    position_loss,
    run_arms,
    task_eval,
    truncated_context_loss,
    with_design,
)
from dsa.train.trainer import TrainConfig


def test_sampler_is_deterministic_and_masks_noise():
    cfg = SyntheticConfig(vocab_size=64, seq_len=40, n_pairs=4, n_queries=3)
    s = SyntheticSampler("recall", cfg, 3, seed=5)
    x1, y1 = s.batch(7)
    x2, y2 = SyntheticSampler("recall", cfg, 3, seed=5).batch(7)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(x1, s.batch(8)[0])
    assert int((y1 != IGNORE_INDEX).sum()) == 3 * 3  # the answers only
    off = OffsetSampler(s, 5)
    assert torch.equal(off.batch(2)[0], s.batch(7)[0])
    with pytest.raises(ValueError, match="offset"):
        OffsetSampler(s, -1)


def test_needle_sampler_cycles_distances_and_checks_them():
    cfg = SyntheticConfig(vocab_size=64, seq_len=32)
    s = SyntheticSampler("needle", cfg, 2, seed=0, distances=(3, 9))
    for step, d in ((0, 3), (1, 9), (2, 3)):
        b = s.full_batch(step)
        assert torch.equal(b.query_pos[:, 0] - b.relevant_pos[:, 0, 0], torch.full((2,), d))
    with pytest.raises(ValueError, match="distance"):
        SyntheticSampler("needle", cfg, 2, seed=0, distances=(40,))
    with pytest.raises(ValueError, match="distances"):
        SyntheticSampler("recall", SyntheticConfig(vocab_size=64, seq_len=32), 2, seed=0, distances=(3,))


def test_cut_relevant_removes_exactly_the_relevant_tokens():
    cfg = SyntheticConfig(vocab_size=64, seq_len=40, n_pairs=4, n_queries=2)
    b = make_recall_batch(cfg, 3, torch.Generator().manual_seed(0))
    c = cut_relevant(b, cfg, torch.Generator().manual_seed(1))
    changed = c.x != b.x
    assert changed[:, : 2 * 4].sum() >= 1 and not changed[:, 2 * 4:].any()
    assert (c.x[:, :8] >= cfg.noise_lo).all() == bool(((b.relevant_pos >= 0).sum((1, 2)) == 8).all())
    assert torch.equal(c.y, b.y)


@pytest.mark.parametrize("d,k,bucket", [(1, 16, 0), (4, 16, 1), (15, 16, 1), (16, 16, 2), (63, 16, 2), (64, 16, 3)])
def test_distance_bucket(d, k, bucket):
    assert distance_bucket(d, k) == DISTANCE_BUCKETS[bucket]


class _Oracle(torch.nn.Module):
    """A 'model' that answers recall by looking the key up (always right), or, with ``blind``, guesses 0;
    its selection holds the first k positions."""

    def __init__(self, vocab, k, blind=False):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.cfg = type("C", (), {"vocab_size": vocab})()
        self.k, self.blind = k, blind

    def forward(self, x, sparse=True):
        b, length = x.shape
        logits = torch.zeros(b, length, self.cfg.vocab_size)
        if not self.blind:
            for i in range(b):
                for t in range(length):
                    hit = (x[i, :t] == x[i, t]).nonzero()
                    if len(hit) and int(hit[0]) + 1 < length:
                        logits[i, t, x[i, int(hit[0]) + 1]] = 1.0
        sel = torch.arange(self.k).expand(b, length, self.k).clone()
        aux = type("A", (), {"selection": sel})()
        return type("O", (), {"logits": logits, "aux": [aux]})()


def test_task_eval_counts_with_a_known_model():
    cfg = SyntheticConfig(vocab_size=64, seq_len=40, n_pairs=4, n_queries=3)
    batches = [make_recall_batch(cfg, 2, torch.Generator().manual_seed(i)) for i in range(2)]
    res = task_eval(_Oracle(64, k=4), batches, top_k=4, sparse=True)
    n = sum(c["n"] for c in res.values())
    assert n == 2 * 2 * 3
    assert sum(c["correct"] for c in res.values()) == n  # the oracle finds every key
    assert sum(c["correct_cut"] for c in res.values()) < n  # without the pairs it cannot
    # the selection (positions 0..3) holds the relevant pair exactly for pairs 0 and 1
    expect = sum(int(((b.relevant_pos >= 0) & (b.relevant_pos < 4)).sum()) for b in batches)
    assert sum(c["hits"] for c in res.values()) == expect
    assert sum(c["hit_pairs"] for c in res.values()) == 2 * 2 * 3 * 2
    blind = task_eval(_Oracle(64, k=4, blind=True), batches, top_k=4, sparse=False)
    assert sum(c["hit_pairs"] for c in blind.values()) == 0


def test_position_loss_and_truncation_on_a_tiny_model():
    from dsa.model.config import ModelConfig
    from dsa.model.lm import TransformerLM

    m = TransformerLM(ModelConfig(vocab_size=32, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, max_seq_len=64,
                                  attention="dense", top_k=4), seed=0)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 32, (2, 64), generator=g)
    y = torch.randint(0, 32, (2, 64), generator=g)
    pl = position_loss(m, [(x, y)], top_k=4, sparse=False)
    assert {k: v["n"] for k, v in pl.items()} == {"t < k": 8, "k <= t < 4k": 24, "t >= 4k": 96}
    with torch.no_grad():
        total = torch.nn.functional.cross_entropy(m(x).logits.transpose(1, 2), y, reduction="sum")
    assert sum(v["loss_sum"] for v in pl.values()) == pytest.approx(float(total), rel=1e-5)
    tr = truncated_context_loss(m, [(x, y)], window=48, sparse=False)  # 48 + L/4 = L: nothing is cut
    assert tr["n"] == 2 * 16 and tr["cut_loss"] == pytest.approx(tr["full_loss"], rel=1e-5)
    short = truncated_context_loss(m, [(x, y)], window=4, sparse=False)
    assert short["full_loss"] == pytest.approx(tr["full_loss"], rel=1e-6) and short["cut_loss"] != tr["cut_loss"]
    with pytest.raises(ValueError, match="window"):
        truncated_context_loss(m, [(x, y)], window=49, sparse=False)


def test_experiments_are_mqa_truly_sparse_and_carry_their_design():
    full = long_context_sparse("full")
    assert {c.n_kv_heads for c in full} == {1}
    assert {c.seq_len for c in full} == {8192, 16384, 32768, 65536}
    ratios = {c.seq_len // c.top_k for c in full if c.attention == "dsa"}
    assert ratios == {4, 16, 64}
    seeds = {}
    for c in full:
        d = design_of(c)
        assert d["experiment"] == "lc_sparse" and d["layout"] == "MQA" and d["seq_len"] == c.seq_len
        seeds.setdefault((d["task"], d["arm"], c.seq_len, c.top_k), set()).add(c.seed)
    assert min(len(s) for s in seeds.values()) >= 5
    assert len({c.run_name() for c in full}) == len(full)
    assert needle_distances(8192, 512) == (128, 256, 512, 1024, 2048, 4096)
    assert get_experiment("long_context_recipe", "small")


def test_recipe_arms_share_data_order_and_tokens():
    arms = {design_of(c)["arm"] + str(design_of(c)["replicate"]): c for c in recipe_arms("small", "recall", 128, 8, 0, 2)}
    base, cont, dsa, scratch = arms["dense_base0"], arms["dense_continued0"], arms["dsa_from_dense0"], arms["dsa_scratch0"]
    assert design_of(base)["save_checkpoint"]
    for c in (cont, dsa, arms["dense_continued1"]):
        assert design_of(c)["init_from_arm"] == base.run_name() and design_of(c)["data_offset"] == base.steps
        assert c.steps == cont.steps
    assert scratch.steps == base.steps + cont.steps and scratch.indexer_kl and scratch.recipe == "scratch"
    assert dsa.dense_steps == 0 and dsa.warmup_steps > 0 and dsa.phases()[0][0] == "warmup"
    order = [c.run_name() for c in order_arms(list(arms.values())[::-1])]
    assert order.index(base.run_name()) < order.index(cont.run_name())
    recipe = long_context_recipe("full")
    reps = [c for c in recipe if design_of(c)["replicate"] > 0]
    assert reps and all(c.seed == 0 for c in reps)


def test_order_arms_rejects_a_missing_source():
    c = with_design(TrainConfig(out="", progress=False, name="x"), {"init_from_arm": "nowhere"})
    with pytest.raises(ValueError, match="nowhere"):
        order_arms([c])


def test_run_arms_trains_and_records(tmp_path):
    cfgs = [c for c in long_context_sparse("small") if c.seq_len == 128 and c.seed == 0
            and design_of(c)["task"] == "recall" and c.top_k == 8]
    for c in cfgs:
        c.steps, c.eval_every, c.batch_size = 2, 2, 2
    recs = run_arms(cfgs, tmp_path / "lc.jsonl", tmp_path / "ckpt", n_eval_batches=1, extra={"timing": {"x": 1}})
    lines = (tmp_path / "lc.jsonl").read_text().splitlines()
    assert len(lines) == len(cfgs) == 2
    for r in recs:
        assert r["design"]["task"] == "recall" and r["timing"] == {"x": 1}
        counts = r["long_context"]["by_bucket"]
        assert sum(v["n"] for v in counts.values()) == 2 * 31
        assert (sum(v["hit_pairs"] for v in counts.values()) > 0) == (r["config"]["attention"] == "dsa")


def test_recipe_arms_run_from_the_dense_checkpoint(tmp_path):
    cfgs = recipe_arms("small", "recall", 64, 4, 0, 1, steps=(2, 2, 1))
    for c in cfgs:
        c.batch_size, c.eval_every = 2, 2
    recs = run_arms(cfgs, tmp_path / "r.jsonl", tmp_path / "ckpt", n_eval_batches=1)
    assert [r["design"]["arm"] for r in recs][0] == "dense_base"
    assert (tmp_path / "ckpt" / f"{cfgs[0].run_name()}.pt").exists()


def test_checkpoint_holds_what_checkpoint_readers_need(tmp_path):
    from dsa.model.config import ModelConfig
    from dsa.model.lm import TransformerLM
    from dsa.train.long_context import save_checkpoint

    m = TransformerLM(ModelConfig(vocab_size=32, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, max_seq_len=16,
                                  attention="dense", top_k=4), seed=0)
    p = save_checkpoint(m, TrainConfig(out="", progress=False, steps=3), tmp_path / "c.pt")
    ck = torch.load(p, weights_only=True)
    assert ck["model_config"] == m.cfg.to_dict() and ck["lm_steps"] == 3
    again = TransformerLM(ModelConfig(**ck["model_config"]), seed=1)
    again.load_state_dict(ck["state_dict"])
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), m.state_dict().values()))


def test_long_context_experiments_are_not_sweep_experiments():
    from dsa.train.experiments import EXPERIMENTS, LONG_CONTEXT_EXPERIMENTS

    assert not set(EXPERIMENTS) & set(LONG_CONTEXT_EXPERIMENTS)
    for name in LONG_CONTEXT_EXPERIMENTS:
        for size in ("small", "full"):
            cfgs = get_experiment(name, size)
            names = [c.run_name() for c in cfgs]
            assert len(set(names)) == len(names)
            # deliberate re-runs (design replicate > 0) are the same configuration as their original
            first = {c.run_name().rsplit("-r", 1)[0] if design_of(c)["replicate"] else c.run_name(): c for c in cfgs
                     if not design_of(c)["replicate"]}
            for c in cfgs:
                if design_of(c)["replicate"]:
                    twin = first[c.run_name().rsplit("-r", 1)[0]]
                    def same(x):  # everything but the name and the replicate number
                        return {**vars(x), "name": None, "design": {**design_of(x), "replicate": None}}
                    assert same(c) == same(twin)
