"""dsa.study.long_context on hand-made records whose answers are known."""

import json
from pathlib import Path

import pytest

from dsa.study import long_context as LC
from dsa.study.equivalence import binomial_ci
from dsa.train.experiments import recipe_arms


def _task_rec(arm, seed, correct, cut, n=200, hits=0, rep=0, task="recall"):
    return {"design": {"experiment": "lc_recipe", "task": task, "arm": arm, "replicate": rep},
            "config": {"seq_len": 8192, "top_k": 512, "seed": seed}, "provenance": {"device": "H200"},
            "final": {"val_loss": 1.0},
            "long_context": {"kind": "task", "by_bucket": {
                "d >= 4k": {"n": n, "correct": correct, "correct_cut": cut, "hits": hits,
                            "hit_pairs": 2 * n if hits else 0}}}}


def _text_rec(arm, seed, loss, full, cut, rep=0, start_step=None):
    """start_step: None = a run from step 0; 0 = started from the base's weights on a schedule of its own (the
    pilot's continued arms); > 0 = continued on the base's schedule."""
    init = {} if start_step is None else {"init_from": {"path": "base.pt", **({"start_step": start_step} if start_step
                                                                               else {})}}
    return {"design": {"experiment": "lc_recipe", "task": "text", "arm": arm, "replicate": rep}, **init,
            "config": {"seq_len": 8192, "top_k": 512, "seed": seed, "start_step": start_step or 0},
            "provenance": {"device": "H200"},
            "final": {"val_loss": loss},
            "long_context": {"kind": "text", "by_position": {"t < k": {"loss_sum": 10.0, "n": 2},
                                                             "t >= 4k": {"loss_sum": 6.0, "n": 3}},
                             "truncated": {"full_loss": full, "cut_loss": cut}}}


def test_task_table_accuracy_interval_and_hit_rate():
    t = LC.task_table([_task_rec("dsa_from_dense", 0, 150, 2, hits=300)])
    row = t.iloc[0]
    assert row.accuracy == pytest.approx(0.75) and (row.acc_low, row.acc_high) == pytest.approx(binomial_ci(150, 200))
    assert row.hit_rate == pytest.approx(0.75) and row.accuracy_cut == pytest.approx(0.01)


def test_far_context_check_says_when_a_task_does_not_test_selection():
    uses = LC.far_context_check(LC.task_table([_task_rec("dense_continued", s, 180, 3) for s in range(3)]),
                                LC.text_table([]))
    assert uses.iloc[0].verdict == "dense uses the far tokens"
    blind = LC.far_context_check(LC.task_table([_task_rec("dense_continued", s, 4, 3) for s in range(3)]),
                                 LC.text_table([]))
    assert "does not test selection" in blind.iloc[0].verdict
    texts = LC.text_table([_text_rec("dense", s, 4.0, 4.0 + 0.001 * s, 4.3 + 0.002 * s) for s in range(3)])
    assert LC.far_context_check(LC.task_table([]), texts).iloc[0].verdict == "dense uses the tokens beyond k"
    flat = LC.text_table([_text_rec("dense", s, 4.0, 4.0 + 0.01 * s, 4.0 + 0.01 * (2 - s)) for s in range(3)])
    assert "no evidence" in LC.far_context_check(LC.task_table([]), flat).iloc[0].verdict


def test_text_table_buckets():
    t = LC.text_table([_text_rec("dense", 0, 4.0, 4.0, 4.2)]).set_index("bucket")
    assert t.loc["t < k", "loss"] == pytest.approx(5.0) and t.loc["t >= 4k", "loss"] == pytest.approx(2.0)


def test_arm_verdicts_with_noise_floor_and_exclusions():
    recs = [_text_rec("dense_base", s, 4.5, 4, 4) for s in range(5)]
    recs += [_text_rec("dense_continued", s, 4.0 + 0.1 * s, 4, 4) for s in range(5)]
    recs += [_text_rec("dsa_from_dense", s, 4.0 + 0.1 * s + 0.001 * (s % 2), 4, 4) for s in range(5)]
    recs += [_text_rec("dsa_scratch", s, 4.2 + 0.1 * s, 4, 4) for s in range(5)]
    recs += [_text_rec("dense_continued", 0, 4.004, 4, 4, rep=1), _text_rec("dense_continued", 0, 3.998, 4, 4, rep=2)]
    m = LC.run_metrics(LC.task_table(recs), LC.text_table(recs))
    v = LC.arm_verdicts(m, "dense_continued").set_index("arm")
    assert set(v.index) == {"dsa_from_dense", "dsa_scratch"}  # the checkpoint arm is not an arm under test
    assert v.loc["dsa_from_dense", "verdict"] == "equivalent" and v.loc["dsa_scratch", "verdict"] == "different"
    assert v.loc["dsa_from_dense", "noise_floor"] > 0 and "noise floor" in v.loc["dsa_from_dense", "verdict_text"]


def test_lr_schedule_of_records_old_and_new():
    assert LC.lr_schedule(_text_rec("dsa_scratch", 0, 4, 4, 4)) == "own"
    assert LC.lr_schedule(_text_rec("dense_continued", 0, 4, 4, 4, start_step=0)) == "restarted"
    assert LC.lr_schedule(_text_rec("dense_continued", 0, 4, 4, 4, start_step=200)) == "continued"
    recorded = Path(__file__).resolve().parents[2] / "data" / "gpu" / "long_context"
    for path, continued in (("pilot-1/long_context_pilot.seed-1.jsonl", "restarted"),
                            ("long_context_pilot.seed-1-text.jsonl", "continued")):  # the first pilot, its re-run
        got = {(r["design"]["task"], r["design"]["arm"]): LC.lr_schedule(r)
               for r in map(json.loads, (recorded / path).read_text().splitlines())}
        assert got[("text", "dense_continued")] == got[("text", "dsa_from_dense")] == continued, path
        assert got[("text", "dense_base")] == got[("text", "dsa_scratch")] == "own", path


@pytest.mark.parametrize("continued_at", [0, 5])
def test_a_verdict_across_a_restarted_schedule_says_it_is_confounded(continued_at):
    """The pilot's recipe (continued arms on restarted schedules, continued_at=0): DSA from scratch against
    dense continued differs in schedule too, DSA from dense against dense continued does not; after the fix
    (continued at the base's step) no verdict is confounded."""
    recs = [_text_rec("dense_continued", s, 4.0 + 0.1 * s, 4, 4, start_step=continued_at) for s in range(5)]
    recs += [_text_rec("dsa_from_dense", s, 4.0 + 0.1 * s, 4, 4, start_step=continued_at) for s in range(5)]
    recs += [_text_rec("dsa_scratch", s, 3.8 + 0.1 * s, 4, 4) for s in range(5)]
    v = LC.arm_verdicts(LC.run_metrics(LC.task_table(recs), LC.text_table(recs)), "dense_continued").set_index("arm")
    assert v.loc["dsa_from_dense", "same_lr_schedule"] and "Confounded" not in v.loc["dsa_from_dense", "verdict_text"]
    assert v.loc["dsa_scratch", "same_lr_schedule"] == bool(continued_at)
    assert ("Confounded" in v.loc["dsa_scratch", "verdict_text"]) == (not continued_at)


def test_restarted_and_continued_runs_of_one_arm_are_never_averaged():
    """The pilot's records (restarted schedules) beside a re-run's (continued at the base's step): each kind of
    an arm is its own verdict against the baseline's runs of the same kind, and DSA from scratch (one schedule)
    pairs with the continued baseline, unconfounded."""
    recs = [_text_rec(arm, s, 4.0 + 0.1 * s, 4, 4, start_step=0) for s in range(5)
            for arm in ("dense_continued", "dsa_from_dense")]  # the pilot: equal arms
    recs += [_text_rec("dense_continued", s, 4.0 + 0.1 * s, 4, 4, start_step=5) for s in range(5)]
    recs += [_text_rec("dsa_from_dense", s, 4.5 + 0.1 * s, 4, 4, start_step=5) for s in range(5)]  # 0.5 worse
    recs += [_text_rec("dsa_scratch", s, 4.0 + 0.1 * s, 4, 4) for s in range(5)]
    v = LC.arm_verdicts(LC.run_metrics(LC.task_table(recs), LC.text_table(recs)), "dense_continued")
    v = v.set_index(["arm", "restarted"])
    assert v.loc[("dsa_from_dense", True), "diff"] == pytest.approx(0.0)
    assert abs(v.loc[("dsa_from_dense", False), "diff"]) == pytest.approx(0.5)
    assert v.loc[("dsa_scratch", False), "diff"] == pytest.approx(0.0) and v.same_lr_schedule.all()


def test_design_and_not_recorded():
    cfgs = recipe_arms("small", "recall", 128, 8, 0, 2) + recipe_arms("small", "recall", 128, 8, 1, 1)
    d = LC.design_table(cfgs).set_index("arm")
    assert d.loc["dense_continued", "runs"] == 3 and d.loc["dense_continued", "seeds"] == 2
    assert d.loc["dsa_scratch", "k/L"] == "1/16"
    assert (d.loc["dense_continued", "first_step"] == d.loc["dense_base", "steps"]
            and d.loc["dsa_scratch", "first_step"] == 0)
    rec = {"design": {"task": "recall", "arm": "dsa_scratch"}, "config": {"seq_len": 128, "top_k": 8, "seed": 0}}
    miss = LC.not_recorded([rec], cfgs).set_index("arm")
    assert miss.loc["dsa_scratch", "seeds missing"] == "1" and miss.loc["dense_base", "seeds missing"] == "0, 1"


def test_the_noise_floor_pairs_replicates_of_one_lr_schedule_only():
    """A restarted run and a continued run of one arm and seed are no re-runs of each other: with re-runs of
    each kind within 0.01 and the two kinds 0.5 apart, the noise floor stays at the re-runs' scale."""
    recs = []
    for start, base in ((0, 4.5), (5, 4.0)):  # the pilot's restarted arm, the re-run's continued arm
        recs += [_text_rec("dense_continued", s, base + 0.1 * s, 4, 4, start_step=start) for s in range(3)]
        recs += [_text_rec("dense_continued", 0, base + 0.01 * (rep == 2), 4, 4, start_step=start, rep=rep)
                 for rep in (1, 2)]
    recs += [_text_rec("dsa_scratch", s, 4.0 + 0.1 * s, 4, 4) for s in range(3)]
    v = LC.arm_verdicts(LC.run_metrics(LC.task_table(recs), LC.text_table(recs)), "dense_continued")
    assert (v.noise_floor < 0.02).all()  # pooled across the kinds it would be ~0.25


@pytest.mark.parametrize("correct, learned", [(1, False), (60, True)])
def test_a_task_neither_side_learned_is_flagged_not_evidence(correct, learned):
    """Exact match of 1/200 on both sides (chance 1/127 at a 512 vocabulary) makes an 'equivalent' verdict of
    two failures: flagged (learned False, said in the text); at 60/200 the verdict stands as it is."""
    recs = []
    for s in range(5):
        for arm in ("dense_continued", "dsa_from_dense"):
            r = _task_rec(arm, s, correct + (s % 2), 0)
            r["config"]["vocab_size"] = 512
            recs.append(r)
    v = LC.arm_verdicts(LC.run_metrics(LC.task_table(recs), LC.text_table([])), "dense_continued").iloc[0]
    assert bool(v.learned) == learned and ("Not learned" in v.verdict_text) == (not learned)
    assert LC.chance_accuracy(recs[0]) == pytest.approx(1 / 127)
