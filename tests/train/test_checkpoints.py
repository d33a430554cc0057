"""Checkpoints: what training writes loads back (model, notebook 01's path); a resumed run, killed at a
checkpoint or between two, in any phase or at a phase boundary, ends exactly where the uninterrupted run
ends; init_from starts a DSA run from dense weights; a continued run (start_step > 0) is the run it continues
carried on: one LR curve over the global step, the next batches, the optimiser state of the shared weights;
bad checkpoints and settings name the argument."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from dsa.model.config import ModelConfig
from dsa.model.lm import TransformerLM
from dsa.text.batches import BatchSampler, eval_batches
from dsa.train import checkpoints as ckpt
from dsa.train import trainer
from dsa.train.sweep import config_key
from dsa.train.trainer import TrainConfig, train

VOCAB, SEQ, BATCH = 32, 24, 4
TIMING = ("time_per_step_s", "tokens_per_s", "peak_mem_mb", "peak_rss_mb")


def _tokens(n: int, seed: int) -> torch.Tensor:
    """A stream in which every 4th token repeats the one 3 back (something for attention to find)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(0, VOCAB, (n,), generator=g)
    t[3::4] = (t[0::4][: t[3::4].numel()] * 5 + 1) % VOCAB
    return t


def _data(data_seed: int = 0):
    train_tok, val_tok = _tokens(4000, 1), _tokens(600, 2)
    return (VOCAB, BatchSampler(train_tok, SEQ, BATCH, seed=data_seed),
            BatchSampler(train_tok, SEQ, BATCH, seed=data_seed + 7919),
            eval_batches(val_tok, SEQ, BATCH, 1), {"kind": "test"})


def _cfg(**kw) -> TrainConfig:
    # deepseek DSA by default: iterations 1-4 dense, 5-7 indexer warm-up, 8-15 sparse
    base = dict(attention="dsa", seq_len=SEQ, top_k=6, batch_size=BATCH, steps=12, dense_steps=4, warmup_steps=3,
                d_model=32, n_layers=2, n_heads=2, indexer_heads=2, indexer_dim=8, indexer_rope_dim=4, lr=1e-2,
                lr_warmup_steps=2, indexer_lr=1e-2, eval_every=3, eval_batches=1, out="", progress=False)
    base.update(kw)
    return TrainConfig(**base)


def _history(rec: dict) -> list[dict]:
    return [{k: v for k, v in h.items() if k not in TIMING} for h in rec["history"]]


def _same_run(a: dict, b: dict) -> None:
    assert _history(a) == _history(b)
    assert a["distributed"]["param_checksums_by_rank"] == b["distributed"]["param_checksums_by_rank"]
    sa, sb = a["model"].state_dict(), b["model"].state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


class Killed(Exception):
    pass


def _kill_after_checkpoint(monkeypatch, at_iter: int) -> None:
    """The run dies right after writing its checkpoint at iteration ``at_iter``."""
    real = trainer._checkpoint

    def dying(run, phase):
        real(run, phase)
        if run.it == at_iter:
            raise Killed(at_iter)

    monkeypatch.setattr(trainer, "_checkpoint", dying)


@pytest.fixture(scope="module")
def uninterrupted():
    return train(_cfg(), data=_data())


def test_two_identical_runs_give_identical_histories(uninterrupted, tmp_path):
    """Determinism (the trainer's refactor kept the losses of main's trainer: compared once, by hand), and
    writing checkpoints does not change the run."""
    again = train(_cfg(checkpoint_path=str(tmp_path / "c.pt"), checkpoint_every=2), data=_data())
    _same_run(uninterrupted, again)
    other_seed = train(_cfg(seed=1), data=_data())
    assert _history(other_seed) != _history(uninterrupted)


# 2: inside dense; 4: at dense -> warm-up; 6: inside warm-up; 7: at warm-up -> sparse; 10: inside sparse
@pytest.mark.parametrize("stop", [2, 4, 6, 7, 10])
def test_resume_after_a_kill_equals_the_uninterrupted_run(uninterrupted, tmp_path, monkeypatch, stop):
    path = tmp_path / "run.ckpt.pt"
    cfg = _cfg(checkpoint_path=str(path), checkpoint_every=1, resume=True)
    with monkeypatch.context() as m:
        _kill_after_checkpoint(m, stop)
        with pytest.raises(Killed):
            train(cfg, data=_data())
    assert ckpt.load_checkpoint(path)["progress"]["it"] == stop
    resumed = train(cfg, data=_data())
    assert resumed["resumed_from"]["it"] == stop
    _same_run(uninterrupted, resumed)
    assert ckpt.load_checkpoint(path)["progress"]["it"] == 15


def test_a_run_killed_between_checkpoints_resumes_from_the_last_one(uninterrupted, tmp_path, monkeypatch):
    path = tmp_path / "run.ckpt.pt"
    cfg = _cfg(checkpoint_path=str(path), checkpoint_every=3, resume=True)
    real = trainer._lm_step

    def dying(run, *a):
        if run.it == 10:  # iteration 11 (sparse) never finishes; the last checkpoint is at 9
            raise Killed
        return real(run, *a)

    with monkeypatch.context() as m:
        m.setattr(trainer, "_lm_step", dying)
        with pytest.raises(Killed):
            train(cfg, data=_data())
    resumed = train(cfg, data=_data())
    assert resumed["resumed_from"] == {"path": str(path), "it": 9, "lm_step": 6, "phase": "sparse"}
    _same_run(uninterrupted, resumed)


def test_resume_of_a_finished_run_changes_nothing(uninterrupted, tmp_path):
    cfg = _cfg(checkpoint_path=str(tmp_path / "c.pt"), resume=True)
    train(cfg, data=_data())
    _same_run(uninterrupted, train(cfg, data=_data()))


def test_resume_without_a_checkpoint_starts_fresh_and_says_so(uninterrupted, tmp_path, capsys):
    path = tmp_path / "none-yet.pt"
    rec = train(_cfg(checkpoint_path=str(path), resume=True), data=_data())
    assert "no checkpoint" in capsys.readouterr().err and "resumed_from" not in rec
    _same_run(uninterrupted, rec)
    assert path.is_file()


def test_checkpoint_holds_the_training_state(tmp_path):
    path = tmp_path / "c.pt"
    rec = train(_cfg(checkpoint_path=str(path), data_seed=3), data=_data(data_seed=3))
    ck = ckpt.load_checkpoint(path)
    assert ck["format"] == ckpt.FORMAT and set(ckpt.TRAINING_KEYS) <= set(ck)
    assert ck["progress"] == {"it": 15, "lm_step": 12, "phase": "sparse", "lr": trainer.lr_at(11, _cfg())}
    assert ck["data"] == {"data_seed": 3, "train_seed": 3, "warm_seed": 3 + 7919, "world_size": 1,
                          "next_train_batch": 12, "next_warm_batch": 3}
    assert ck["optimizers"]["indexer"] is not None and ck["optimizers"]["main"]["state"]
    assert ck["config"]["checkpoint_path"] == str(path) and "git_commit" in ck["provenance"]
    assert rec["checkpoint"] == str(path)
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"], "the temp file of the atomic write is gone"


def test_load_model_rebuilds_the_trained_model(tmp_path):
    path = tmp_path / "c.pt"
    rec = train(_cfg(checkpoint_path=str(path)), data=_data())
    model = ckpt.load_model(path)
    assert isinstance(model, TransformerLM) and not model.training
    x = _data()[1].batch(0)[0]
    trained = rec["model"].eval()
    with torch.no_grad():
        for sparse in (False, True):
            assert torch.equal(model(x, sparse=sparse).logits, trained(x, sparse=sparse).logits)
    longer = ckpt.load_model(path, max_seq_len=2 * SEQ)
    assert longer.cfg.max_seq_len == 2 * SEQ and longer(torch.cat([x, x], 1)).logits.shape == (BATCH, 2 * SEQ, VOCAB)


def test_notebook_01_loads_what_training_writes(tmp_path):
    """Notebook 01's `checkpoint` parameter goes to dsa.study.analysis.make_inspect_model."""
    from dsa.study.analysis import InspectModelConfig, layer_tensors, make_inspect_model

    path = tmp_path / "dsa.ckpt.pt"
    rec = train(_cfg(checkpoint_path=str(path)), data=_data())
    model, label = make_inspect_model(str(path), InspectModelConfig(max_seq_len=64, d_model=8), vocab_size=999)
    assert label == f"checkpoint {path.name}" and model.cfg.max_seq_len == 64 and model.cfg.d_model == 32
    trained = rec["model"].state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in model.state_dict().items())
    layers = layer_tensors(model, torch.randint(0, VOCAB, (2, 40)))
    assert len(layers) == 2
    dense = tmp_path / "dense.ckpt.pt"
    train(_cfg(attention="dense", dense_steps=None, warmup_steps=None, steps=2, checkpoint_path=str(dense)),
          data=_data())
    with pytest.raises(ValueError, match="checkpoint.*no indexer"):
        make_inspect_model(str(dense))


def test_init_from_a_dense_checkpoint_starts_a_dsa_run_from_its_weights(tmp_path):
    dense_path = tmp_path / "dense.pt"
    dense = train(_cfg(attention="dense", dense_steps=None, warmup_steps=None, steps=6,
                       checkpoint_path=str(dense_path)), data=_data())
    cfg = _cfg(init_from=str(dense_path), steps=6, dense_steps=0, warmup_steps=3, seed=5)
    rec = train(cfg, data=_data())
    assert rec["init_from"] == {"path": str(dense_path), "indexer": "new"}
    first = rec["history"][0]
    assert first["lm_step"] == 0 and first["iter"] == 0 and first["phase"] == "warmup"
    # dense-mode eval of the loaded weights = the dense run's last eval; the indexer is seed 5's fresh one
    probe = train(_cfg(init_from=str(dense_path), steps=1, dense_steps=1, warmup_steps=0, indexer_kl=False, seed=5),
                  data=_data())
    assert probe["history"][0]["val_loss"] == dense["final"]["val_loss"]
    fresh = TransformerLM(cfg.model_config(VOCAB), seed=5)
    got = probe["model"].state_dict()
    assert all(torch.equal(v, got[k]) for k, v in fresh.state_dict().items() if ".indexer." in k)
    back = train(_cfg(attention="dense", dense_steps=None, warmup_steps=None, steps=2, init_from=str(dense_path)),
                 data=_data())
    assert back["init_from"]["indexer"] is None


def test_init_from_a_dsa_checkpoint_into_a_dense_run_drops_the_indexer(tmp_path):
    path = tmp_path / "dsa.pt"
    train(_cfg(steps=2, dense_steps=1, warmup_steps=1, checkpoint_path=str(path)), data=_data())
    rec = train(_cfg(attention="dense", dense_steps=None, warmup_steps=None, steps=2, init_from=str(path)),
                data=_data())
    assert rec["init_from"]["indexer"] == "dropped"


# ------------------------------------------------------------------ continued training (start_step > 0)
def _dense_base(tmp_path, steps=4, schedule_steps=12, **kw) -> tuple[dict, str]:
    """The dense part of _cfg()'s recipe as a run of its own, told the whole schedule; (record, checkpoint)."""
    path = str(tmp_path / f"base{steps}.pt")
    rec = train(_cfg(attention="dense", dense_steps=None, warmup_steps=None, steps=steps,
                     schedule_steps=schedule_steps, checkpoint_path=path, **kw), data=_data())
    return rec, path


def _continued(path: str, **kw) -> TrainConfig:
    """The rest of _cfg()'s recipe (warm-up 3, sparse 8) continuing the dense base at global step 4."""
    return _cfg(**{"init_from": path, "start_step": 4, "steps": 8, "dense_steps": 0, "warmup_steps": 3, **kw})


def test_the_recipe_split_at_its_checkpoint_trains_as_the_run_in_one_go(uninterrupted, tmp_path):
    """Dense base (4 steps) + DSA continued from it (warm-up 3, sparse 8) = _cfg()'s one run (dense 4, warm-up 3,
    sparse 8), bit for bit: same LR per global step, same batches, the base's AdamW moments kept. The old way
    (init_from at step 0: warm-up and cosine again over 8 steps, fresh optimisers) does not give it."""
    base, path = _dense_base(tmp_path)
    assert [h["lm_step"] for h in base["history"]] == [0, 3, 4]
    cont = train(_continued(path), data=_data())
    assert cont["init_from"] == {"path": path, "indexer": "new", "start_step": 4,
                                 "optimizer": {"main": "carried", "indexer": "new"}}
    assert cont["history"][0]["lm_step"] == 4 and cont["history"][-1]["lm_step"] == 12
    assert cont["history"][0]["val_loss"] == base["final"]["val_loss"]
    assert cont["final"]["val_loss"] == uninterrupted["final"]["val_loss"]
    got, want = cont["model"].state_dict(), uninterrupted["model"].state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want)
    restarted = train(_continued(path, start_step=0), data=_data())
    assert "optimizer" not in restarted["init_from"]
    assert restarted["final"]["val_loss"] != uninterrupted["final"]["val_loss"]


def test_dense_continued_equals_the_dense_run_of_all_the_steps(tmp_path):
    whole = train(_cfg(attention="dense", dense_steps=None, warmup_steps=None, steps=7), data=_data())
    _, path = _dense_base(tmp_path, steps=4, schedule_steps=7)
    cont = train(_cfg(attention="dense", dense_steps=None, warmup_steps=None, init_from=path, start_step=4, steps=3),
                 data=_data())
    assert cont["init_from"]["optimizer"] == {"main": "carried", "indexer": None}
    got, want = cont["model"].state_dict(), whole["model"].state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_a_continued_run_starts_with_the_optimiser_state_it_continues(tmp_path, monkeypatch):
    _, path = _dense_base(tmp_path)
    saved = ckpt.load_checkpoint(path)["optimizers"]["main"]
    seen = {}
    real = trainer._carry_optimisers

    def spy(run, ck):
        real(run, ck)
        seen["main"] = copy.deepcopy(run.main_opt.state_dict())  # the steps that follow update it in place
        seen["indexer"] = copy.deepcopy(run.idx_opt.state_dict())

    monkeypatch.setattr(trainer, "_carry_optimisers", spy)
    train(_continued(path, steps=2, schedule_steps=12, warmup_steps=1), data=_data())
    assert saved["state"] and seen["main"]["state"].keys() == saved["state"].keys()
    for i, st in saved["state"].items():
        assert float(st["step"]) == 4
        assert all(torch.equal(seen["main"]["state"][i][k], v) for k, v in st.items())
    assert seen["indexer"]["state"] == {}  # the new indexer: a fresh optimiser


def test_every_split_of_one_schedule_has_the_lr_of_the_whole_run():
    whole = _cfg(steps=30, lr_warmup_steps=5)
    parts = [_cfg(steps=12, schedule_steps=30, lr_warmup_steps=5),
             _cfg(start_step=12, steps=18, dense_steps=0, lr_warmup_steps=5)]
    assert [trainer.lr_at(t, p) for p in parts for t in range(p.start_step, p.start_step + p.steps)] == \
        [trainer.lr_at(t, whole) for t in range(30)]
    assert trainer.lr_at(30, whole) == pytest.approx(whole.lr * whole.min_lr_ratio)  # the schedule's end
    own = _cfg(steps=12, lr_warmup_steps=5)  # a base on a schedule of its own decays to the minimum by step 12
    assert [trainer.lr_at(t, own) for t in range(12)] != [trainer.lr_at(t, whole) for t in range(12)]


def test_a_continued_run_resumes_to_the_same_result(tmp_path, monkeypatch):
    _, path = _dense_base(tmp_path)
    straight = train(_continued(path), data=_data())
    cfg = _continued(path, checkpoint_path=str(tmp_path / "cont.pt"), checkpoint_every=1, resume=True)
    with monkeypatch.context() as m:
        _kill_after_checkpoint(m, 6)  # inside the sparse phase: global LM step 4 + 2
        with pytest.raises(Killed):
            train(cfg, data=_data())
    resumed = train(cfg, data=_data())
    assert resumed["resumed_from"] == {"path": str(tmp_path / "cont.pt"), "it": 6, "lm_step": 7, "phase": "sparse"}
    _same_run(straight, resumed)


@pytest.mark.parametrize("kw,match", [
    ({"init_from": None}, "start_step.*init_from must name"),
    ({"start_step": 3}, "init_from.*LM step 4.*start_step 3"),
    ({"schedule_steps": 20}, "init_from.*schedule of 12 steps there, 20 here"),
    ({"lr": 0.5}, "init_from.*lr=0.01 there, 0.5 here"),
    ({"batch_size": 2}, "init_from.*batch_size"),
    ({"data_seed": 1}, "init_from.*data_seed"),
])
def test_a_continuation_off_the_schedule_or_stream_names_the_argument(tmp_path, kw, match):
    _, path = _dense_base(tmp_path)
    with pytest.raises(ValueError, match=match):
        train(_continued(path, **kw), data=_data())


def test_a_continuation_needs_a_training_checkpoint_and_the_same_stream(tmp_path):
    _, path = _dense_base(tmp_path)
    ck = ckpt.load_checkpoint(path)
    weights = tmp_path / "weights.pt"
    torch.save({"model_config": ck["model_config"], "state_dict": ck["state_dict"]}, weights)
    with pytest.raises(ValueError, match="init_from.*no training state"):
        train(_continued(str(weights)), data=_data())
    with pytest.raises(ValueError, match="init_from.*stopped at batch 4 of the stream seeded 0"):
        train(_continued(path), data=_data(data_seed=5))  # same config, another stream handed in
    with pytest.raises(ValueError, match="schedule_steps"):
        _cfg(steps=12, schedule_steps=11)
    with pytest.raises(ValueError, match="start_step"):
        _cfg(start_step=-1)


def test_a_checkpoint_of_another_config_names_the_argument(tmp_path):
    path = tmp_path / "c.pt"
    train(_cfg(steps=2, dense_steps=1, warmup_steps=1, checkpoint_path=str(path)), data=_data())
    with pytest.raises(ValueError, match="init_from.*shape mismatch"):
        train(_cfg(d_model=48, init_from=str(path)), data=_data())
    with pytest.raises(ValueError, match="checkpoint_path.*another config.*lr"):
        train(_cfg(steps=2, dense_steps=1, warmup_steps=1, checkpoint_path=str(path), resume=True, lr=0.5),
              data=_data())
    with pytest.raises(ValueError, match="checkpoint_path.*train_seed"):
        train(_cfg(steps=2, dense_steps=1, warmup_steps=1, checkpoint_path=str(path), resume=True),
              data=_data(data_seed=1))
    ck = ckpt.load_checkpoint(path)
    ck["data"]["world_size"] = 2
    ckpt.save_checkpoint(path, ck)
    with pytest.raises(ValueError, match="checkpoint_path.*2 rank"):
        train(_cfg(steps=2, dense_steps=1, warmup_steps=1, checkpoint_path=str(path), resume=True), data=_data())


@pytest.mark.parametrize("damage", ["truncated", "garbage", "not a dict", "weights only"])
def test_a_damaged_checkpoint_names_the_argument(tmp_path, damage):
    path = tmp_path / "c.pt"
    train(_cfg(steps=2, dense_steps=1, warmup_steps=1, checkpoint_path=str(path)), data=_data())
    raw = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00not a checkpoint" * 10)
    elif damage == "not a dict":
        torch.save([1, 2, 3], path)
    else:
        ck = ckpt.load_checkpoint(path)
        torch.save({"model_config": ck["model_config"], "state_dict": ck["state_dict"]}, path)
    match = "resume" if damage == "weights only" else "not a (readable|model) checkpoint"
    with pytest.raises(ValueError, match=f"checkpoint_path.*{match}"):
        train(_cfg(steps=2, dense_steps=1, warmup_steps=1, checkpoint_path=str(path), resume=True), data=_data())
    if damage != "weights only":
        with pytest.raises(ValueError, match=f"path.*{match}"):
            ckpt.load_model(path)
    else:
        assert isinstance(ckpt.load_model(path), TransformerLM)  # weights alone load for inspection


def test_missing_files_name_the_argument(tmp_path):
    with pytest.raises(FileNotFoundError, match="path"):
        ckpt.load_model(tmp_path / "nope.pt")
    with pytest.raises(ValueError, match="init_from"):
        _cfg(init_from=str(tmp_path / "nope.pt"))


@pytest.mark.parametrize("kw,match", [
    ({"checkpoint_every": -1}, "checkpoint_every"), ({"checkpoint_every": 1.5}, "checkpoint_every"),
    ({"checkpoint_every": 5}, "checkpoint_every needs a checkpoint file"), ({"resume": True}, "resume needs"),
    ({"checkpoint_path": ""}, "checkpoint_path"), ({"init_from": ""}, "init_from"), ({"resume": "yes"}, "resume"),
])
def test_bad_checkpoint_settings_name_the_argument(kw, match):
    with pytest.raises(ValueError, match=match):
        _cfg(**kw)  # out='' in _cfg: no run JSON to put a checkpoint beside


def test_default_checkpoint_path_is_beside_the_run_json(tmp_path):
    assert _cfg(out=str(tmp_path / "a.json")).checkpoint_file() == tmp_path / "a.ckpt.pt"
    assert _cfg(out=None, name="x").checkpoint_file() == trainer.REPO_ROOT / "runs" / "x.ckpt.pt"
    assert _cfg().checkpoint_file() is None
    assert _cfg(checkpoint_path=str(tmp_path / "b.pt")).checkpoint_file() == tmp_path / "b.pt"


def test_checkpoint_settings_leave_the_sweep_key_alone(tmp_path):
    base = _cfg()
    same = _cfg(checkpoint_every=3, checkpoint_path=str(tmp_path / "c.pt"), resume=True)
    assert config_key(same) == config_key(base)
    path = tmp_path / "w.pt"
    torch.save({"model_config": {}, "state_dict": {}}, path)
    assert config_key(dataclasses.replace(base, init_from=str(path))) != config_key(base), "other weights, other run"


def test_rng_states_round_trip():
    import random

    import numpy as np

    state = ckpt.rng_state(torch.device("cpu"))
    want = (torch.rand(3), random.random(), np.random.rand())
    torch.manual_seed(123), random.seed(4), np.random.seed(5)
    ckpt.set_rng_state(state, torch.device("cpu"))
    got = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(want[0], got[0]) and want[1:] == got[1:]


def test_save_checkpoint_checks_its_input(tmp_path):
    with pytest.raises(TypeError, match="state"):
        ckpt.save_checkpoint(tmp_path / "c.pt", [1])
    with pytest.raises(ValueError, match="state_dict"):
        ckpt.save_checkpoint(tmp_path / "c.pt", {"model_config": ModelConfig().to_dict()})
