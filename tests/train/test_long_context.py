"""Long-context experiments: task streams, the evaluations' counts against a hand-built model, the arms'
order and design factors, the recipe arms (continued from the dense base's checkpoint: one LR curve over the
global step and one token stream for every arm)."""

from dataclasses import replace

import pytest
import torch

from dsa.text.synthetic import IGNORE_INDEX, SyntheticConfig, SyntheticSampler, cut_relevant, make_recall_batch
from dsa.train import long_context
from dsa.train.checkpoints import load_checkpoint, load_model
from dsa.train.experiments import (
    get_experiment,
    long_context_pilot,
    long_context_recipe,
    long_context_sparse,
    needle_distances,
    recipe_arms,
    shortened,
)
from dsa.train.long_context import (
    DISTANCE_BUCKETS,
    check_continuations,
    design_of,
    distance_bucket,
    order_arms,
    position_loss,
    run_arms,
    task_eval,
    truncated_context_loss,
    with_design,
)
from dsa.train.trainer import TrainConfig, lr_at


def test_sampler_is_deterministic_and_masks_noise():
    cfg = SyntheticConfig(vocab_size=64, seq_len=40, n_pairs=4, n_queries=3)
    s = SyntheticSampler("recall", cfg, 3, seed=5)
    x1, y1 = s.batch(7)
    x2, y2 = SyntheticSampler("recall", cfg, 3, seed=5).batch(7)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(x1, s.batch(8)[0])
    assert int((y1 != IGNORE_INDEX).sum()) == 3 * 3  # the answers only


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


def test_recipe_arms_share_one_schedule_and_one_stream():
    arms = {design_of(c)["arm"] + str(design_of(c)["replicate"]): c
            for c in recipe_arms("small", "recall", 128, 8, 0, 2)}
    base, cont, dsa, scratch = (arms["dense_base0"], arms["dense_continued0"], arms["dsa_from_dense0"],
                                arms["dsa_scratch0"])
    assert design_of(base)["save_checkpoint"] and base.start_step == 0
    total = base.steps + cont.steps
    for c in (cont, dsa, arms["dense_continued1"]):
        assert design_of(c)["init_from_arm"] == base.run_name() and c.start_step == base.steps
        assert c.steps == cont.steps
    assert scratch.steps == total and scratch.indexer_kl and scratch.recipe == "scratch"
    assert {c.schedule_length() for c in arms.values()} == {total}
    for c in arms.values():  # the LM tokens of a chain: batches [start_step, start_step + steps) of batch_size x L
        assert (c.batch_size, c.seq_len, c.data_seed) == (scratch.batch_size, scratch.seq_len, scratch.data_seed)
    check_continuations(list(arms.values()))
    for name in ("long_context_recipe", "long_context_pilot"):
        for size in ("small", "full"):
            check_continuations(get_experiment(name, size))
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


def _spy_on_training(monkeypatch) -> dict:
    """{run name: {"x": the LM batches it read, "lr": the main optimiser's LR at each of its steps}}, in order."""
    seen: dict = {}
    current: list = []
    real_task_data, real_step = long_context.task_data, torch.optim.AdamW.step

    class Spy:
        def __init__(self, inner, log):
            self.inner, self.log, self.seed = inner, log, inner.seed

        def batch(self, i, device=None):
            x, y = self.inner.batch(i, device)
            self.log.append(x.clone())
            return x, y

    def task_data(cfg, design):
        vocab, train_s, warm_s, val, meta = real_task_data(cfg, design)
        current[:] = [cfg.run_name()]
        seen[cfg.run_name()] = {"x": [], "lr": []}
        return vocab, Spy(train_s, seen[cfg.run_name()]["x"]), warm_s, val, meta

    def step(self, *a, **kw):
        if len(self.param_groups) == 2:  # the main optimiser (decay, no decay); the indexer's has one group
            seen[current[0]]["lr"].append(self.param_groups[0]["lr"])
        return real_step(self, *a, **kw)

    monkeypatch.setattr(long_context, "task_data", task_data)
    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    return seen


def test_every_arm_sees_one_lr_curve_and_one_token_stream_over_the_global_step(tmp_path, monkeypatch):
    """Dense base + each continued arm, step by step, against DSA from scratch: the same LR at every global step
    and the same LM batch (same tokens, same order, same number); the base writes a training checkpoint at its
    last step. On the old recipe (continued arms restarting warm-up and cosine) the LRs differ from step N0."""
    cfgs = recipe_arms("small", "recall", 64, 4, 0, 1, steps=(3, 3, 1), batch_size=2)
    seen = _spy_on_training(monkeypatch)
    recs = {r["design"]["arm"]: r for r in run_arms(cfgs, tmp_path / "r.jsonl", tmp_path / "ckpt", n_eval_batches=1)}
    name = {design_of(c)["arm"]: c.run_name() for c in cfgs}
    scratch = seen[name["dsa_scratch"]]
    assert len(scratch["lr"]) == len(scratch["x"]) == 6
    assert scratch["lr"] == [lr_at(t, cfgs[-1]) for t in range(6)]
    for arm in ("dense_continued", "dsa_from_dense"):
        chain = [seen[name["dense_base"]], seen[name[arm]]]
        assert [lr for part in chain for lr in part["lr"]] == scratch["lr"], arm
        xs = [x for part in chain for x in part["x"]]
        assert len(xs) == 6 and all(torch.equal(a, b) for a, b in zip(xs, scratch["x"])), arm
        assert recs[arm]["init_from"]["optimizer"]["main"] == "carried"
        assert [h["lm_step"] for h in recs[arm]["history"]][::len(recs[arm]["history"]) - 1] == [3, 6]
    assert recs["dsa_from_dense"]["init_from"]["optimizer"]["indexer"] == "new"
    ck = load_checkpoint(tmp_path / "ckpt" / f"{name['dense_base']}.pt")
    assert ck["progress"]["lm_step"] == 3 and ck["optimizers"]["main"]["state"]
    assert load_model(tmp_path / "ckpt" / f"{name['dense_base']}.pt").cfg.attention == "dense"


def test_arms_that_do_not_continue_their_source_are_refused_before_training(tmp_path):
    cfgs = recipe_arms("small", "recall", 64, 4, 0, 1, steps=(3, 2, 1), batch_size=2)
    for c in cfgs:  # every arm cut to the same number of steps: the continued arms no longer meet the base
        c.steps = 2
    with pytest.raises(ValueError, match="dense_continued.*does not continue.*starts at step 3, its source ends at 2"):
        run_arms(cfgs, tmp_path / "r.jsonl", tmp_path / "ckpt")
    assert not (tmp_path / "r.jsonl").exists()
    cfgs = recipe_arms("small", "recall", 64, 4, 0, 1, steps=(3, 2, 1), batch_size=2)
    with pytest.raises(ValueError, match="LR schedule of 5 vs 9 steps"):
        check_continuations([cfgs[0], replace(cfgs[1], schedule_steps=9)])
    with pytest.raises(ValueError, match="lr: 0.003 vs 0.1"):
        check_continuations([cfgs[0], replace(cfgs[1], lr=0.1)])
    with pytest.raises(ValueError, match="writes no checkpoint"):
        check_continuations([replace(cfgs[0], design={**cfgs[0].design, "save_checkpoint": False}), cfgs[1]])
    with pytest.raises(ValueError, match="start_step 3 > 0 but no init_from_arm"):
        check_continuations([replace(cfgs[1], design={**cfgs[1].design, "init_from_arm": None})])


@pytest.mark.parametrize("steps", [4, 8, 13])
def test_shortened_arms_keep_one_schedule(steps):
    cfgs = long_context_recipe("small") + long_context_pilot("full")[:4]
    short = shortened(cfgs, steps)
    check_continuations(short)
    for c, s in zip(cfgs, short):
        assert s.schedule_length() == steps and s.design == c.design and s.run_name() == c.run_name()
        assert bool(s.warmup_steps) == bool(c.warmup_steps) and s.dense_steps <= s.steps
        assert [p for p, _ in s.phases()] == [p for p, _ in c.phases()]
    by_arm = {design_of(s)["arm"]: s for s in short if design_of(s)["replicate"] == 0}
    assert by_arm["dense_continued"].start_step == by_arm["dense_base"].steps
    with pytest.raises(ValueError, match="without a step"):
        shortened(long_context_recipe("small"), 1)
    with pytest.raises(ValueError, match="steps"):
        shortened(cfgs, 0)


def test_shortened_keeps_a_step_where_half_to_even_rounding_would_not():
    # a run of global steps 3..5 of 10, shortened to 5: 1.5 .. 2.5, which round() (half to even) makes 2 .. 2
    base = long_context_recipe("small")[0]
    c = replace(base, start_step=3, steps=2, dense_steps=0, warmup_steps=0, schedule_steps=10, init_from=None,
                design={**base.design, "init_from_arm": None})
    (s,) = shortened([c], 5)
    assert (s.start_step, s.steps) == (2, 1)


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
