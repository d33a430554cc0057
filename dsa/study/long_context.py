"""Tables and verdicts of the long-context runs (``dsa.train.long_context`` records: ``design`` and
``long_context`` counts): exact-match accuracy with Wilson intervals and the indexer's hit rate per distance
bucket, loss per position bucket, whether dense uses the far context, and the equivalence verdicts of the
recipe's arms with the noise floor of identical re-runs beside them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import pandas as pd

from .equivalence import MARGINS, binomial_ci, noise_floor, tost_paired, verdict_text

_ID = ("experiment", "task", "arm", "seq_len", "top_k", "seed", "replicate", "lr_schedule")


def lr_schedule(record: dict) -> str:
    """How a run's learning rate relates to the step it trains: 'own' (a run from step 0 on its own schedule),
    'continued' (continued at its source's global step on the source's schedule, its AdamW state kept:
    ``TrainConfig.start_step`` > 0), or 'restarted' (started from another run's weights with a warm-up, cosine
    and optimiser of its own: the long-context pilot's continued arms, recorded before ``start_step`` existed).
    'own' and 'continued' runs of one recipe share one LR curve over the global step; a 'restarted' arm differs
    from them in its schedule as well as in what it is compared for."""
    init = record.get("init_from") or (record.get("config") or {}).get("init_from")
    if not init:
        return "own"
    if (record.get("config") or {}).get("start_step") or (isinstance(init, dict) and init.get("start_step")):
        return "continued"
    return "restarted"


LEARNED_OVER_CHANCE = 2.0  # exact match below this many times chance on both sides: the task was not learned


def chance_accuracy(record: dict) -> float:
    """Exact match by guessing on a synthetic task run: one of its (vocab_size - 1) // 4 values
    (``dsa.text.synthetic``: a quarter of the vocabulary are values); NaN without a vocabulary size."""
    v = (record.get("config") or {}).get("vocab_size") or (record.get("model_config") or {}).get("vocab_size")
    return 1.0 / ((v - 1) // 4) if v and v > 4 else math.nan


def _ident(r: dict) -> dict:
    d = r.get("design") or {}
    c = r.get("config") or {}
    return {"experiment": d.get("experiment"), "task": d.get("task"), "arm": d.get("arm"),
            "seq_len": c.get("seq_len"), "top_k": c.get("top_k"), "seed": c.get("seed"),
            "replicate": d.get("replicate", 0), "lr_schedule": lr_schedule(r),
            "device": (r.get("provenance") or {}).get("device"), "val_loss": (r.get("final") or {}).get("val_loss")}


def task_table(records: Iterable[dict], confidence: float = 0.95, method: str = "wilson") -> pd.DataFrame:
    """One row per (synthetic-task run, distance bucket): n queries, exact-match accuracy with its binomial
    interval, the accuracy with the relevant tokens cut, the indexer's hit rate (NaN for dense)."""
    rows = []
    for r in records:
        lc = r.get("long_context") or {}
        if lc.get("kind") != "task":
            continue
        for bucket, c in lc["by_bucket"].items():
            lo, hi = binomial_ci(c["correct"], c["n"], confidence, method)
            rows.append({**_ident(r), "chance": chance_accuracy(r), "bucket": bucket, "n": c["n"],
                         "correct": c["correct"],
                         "accuracy": c["correct"] / c["n"], "acc_low": lo, "acc_high": hi,
                         "correct_cut": c["correct_cut"], "accuracy_cut": c["correct_cut"] / c["n"],
                         "hit_rate": c["hits"] / c["hit_pairs"] if c["hit_pairs"] else math.nan})
    return pd.DataFrame(rows)


def text_table(records: Iterable[dict]) -> pd.DataFrame:
    """One row per (text run, position bucket): mean loss (nats/token) and tokens; plus the run's full-context and
    cut-context loss of the last quarter of each window (``full_loss``, ``cut_loss``, cut to k tokens)."""
    rows = []
    for r in records:
        lc = r.get("long_context") or {}
        if lc.get("kind") != "text":
            continue
        tr = lc.get("truncated") or {}
        for bucket, c in lc["by_position"].items():
            rows.append({**_ident(r), "bucket": bucket, "tokens": c["n"], "loss": c["loss_sum"] / c["n"],
                         "full_loss": tr.get("full_loss", math.nan), "cut_loss": tr.get("cut_loss", math.nan)})
    return pd.DataFrame(rows)


def pooled_accuracy(tasks: pd.DataFrame, by: Sequence[str] = ("task", "arm", "seq_len", "top_k", "bucket"),
                    confidence: float = 0.95) -> pd.DataFrame:
    """Counts summed over seeds (replicate 0) per ``by``: accuracy with its Wilson interval, accuracy with the
    far tokens cut (and its interval), mean hit rate."""
    d = tasks[tasks.replicate == 0]
    rows = []
    for key, g in d.groupby(list(by), dropna=False):
        n, k, kc = int(g.n.sum()), int(g.correct.sum()), int(g.correct_cut.sum())
        lo, hi = binomial_ci(k, n, confidence)
        clo, chi = binomial_ci(kc, n, confidence)
        rows.append({**dict(zip(by, key)), "seeds": g.seed.nunique(), "n": n, "accuracy": k / n, "acc_low": lo,
                     "acc_high": hi, "accuracy_cut": kc / n, "cut_low": clo, "cut_high": chi,
                     "hit_rate": float(g.hit_rate.mean()) if g.hit_rate.notna().any() else math.nan})
    return pd.DataFrame(rows)


def far_context_check(tasks: pd.DataFrame, texts: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """Does dense use the far context? Per task (dense arms, all buckets pooled): exact match with the relevant
    tokens present vs cut (Wilson intervals); per text setting: the last quarter's loss with full vs cut context
    (paired over seeds). A task on which dense does not use the far tokens does not test selection."""
    rows = []
    dense_arms = ("dense", "dense_continued")
    if len(tasks):
        acc = pooled_accuracy(tasks[tasks.arm.isin(dense_arms)], by=("task", "arm", "seq_len"), confidence=confidence)
        for _, a in acc.iterrows():
            uses = a.acc_low > a.cut_high
            rows.append({"task": a.task, "arm": a.arm, "seq_len": a.seq_len, "with far tokens": a.accuracy,
                         "far tokens cut": a.accuracy_cut, "unit": "exact match",
                         "evidence": f"{a.accuracy:.3f} [{a.acc_low:.3f}, {a.acc_high:.3f}] vs cut "
                                     f"{a.accuracy_cut:.3f} [{a.cut_low:.3f}, {a.cut_high:.3f}] over {a.n} queries",
                         "verdict": "dense uses the far tokens" if uses else
                         "dense does not use the far tokens here: this task does not test selection"})
    if len(texts):
        t = (texts[texts.arm.isin(dense_arms) & (texts.replicate == 0)]
             .drop_duplicates(["arm", "seq_len", "top_k", "seed"]))
        for (arm, length, k), g in t.groupby(["arm", "seq_len", "top_k"]):
            res = tost_paired(g.set_index("seed").full_loss, g.set_index("seed").cut_loss, MARGINS["loss"])
            uses = res["ci95_low"] > 0 if math.isfinite(res["ci95_low"]) else False
            rows.append({"task": "text", "arm": arm, "seq_len": length, "with far tokens": float(g.full_loss.mean()),
                         "far tokens cut": float(g.cut_loss.mean()), "unit": f"loss, context cut to k={k}",
                         "evidence": f"cut - full = {res['diff']:+.4f} nats/token over {res['n_pairs']} seed(s)",
                         "verdict": "dense uses the tokens beyond k" if uses else
                         "no evidence that dense uses tokens beyond k: text does not test selection here"})
    return pd.DataFrame(rows)


def run_metrics(tasks: pd.DataFrame, texts: pd.DataFrame) -> pd.DataFrame:
    """One row per run: the metric the verdicts compare (task: exact match over all buckets; text: val loss)."""
    rows = []
    if len(tasks):
        for key, g in tasks.groupby(list(_ID), dropna=False):
            rows.append({**dict(zip(_ID, key)), "metric": "accuracy", "value": g.correct.sum() / g.n.sum(),
                         "chance": g.chance.iloc[0]})
    if len(texts):
        for key, g in texts.groupby(list(_ID), dropna=False):
            rows.append({**dict(zip(_ID, key)), "metric": "loss", "value": float(g.val_loss.iloc[0]),
                         "chance": math.nan})
    return pd.DataFrame(rows, columns=[*_ID, "metric", "value", "chance"])


def _not_learned(metric: str, base: pd.Series, arm: pd.Series, chance: float) -> bool:
    """Both sides' mean exact match below LEARNED_OVER_CHANCE x chance: an equivalence of two failures."""
    return metric == "accuracy" and not math.isnan(chance) and \
        max(base.mean(), arm.mean()) < LEARNED_OVER_CHANCE * chance


def arm_verdicts(metrics: pd.DataFrame, baseline: str, margins: dict | None = None,
                 exclude: Sequence[str] = ("dense_base",)) -> pd.DataFrame:
    """Every arm (but ``exclude``: the checkpoint the others start from, trained for fewer steps) against
    ``baseline`` per (experiment, task, L, k-setting), paired by seed (replicate 0), TOST with the metric's
    margin; the noise floor (SD of the difference of two identical re-runs, from the replicates of the same
    experiment and task) beside each verdict. Runs that restarted their LR schedule (:func:`lr_schedule`: the
    pilot's) and runs on one schedule are never averaged together: each kind of an arm is its own row
    (``restarted``), paired with the baseline's runs of the same kind where there are any.
    ``same_lr_schedule`` is False where the two sides still differ in it (the difference then includes the
    schedule, which the verdict's text says); ``learned`` is False for a synthetic task where both sides stay
    below LEARNED_OVER_CHANCE x chance (said in the text too)."""
    margins = {**MARGINS, **(margins or {})}
    rows = []
    for (exp, task, metric, length), g in metrics.groupby(["experiment", "task", "metric", "seq_len"]):
        # a restarted run is no re-run of a continued one: replicates share their LR schedule too
        floor = noise_floor(g, ["arm", "top_k", "seed", "lr_schedule"], "value")
        noise = floor["sd_diff"] if floor["n_groups"] else None
        g0 = g[g.replicate == 0]
        base = g0[g0.arm == baseline]
        if base.empty:
            continue
        arms = g0[(g0.arm != baseline) & ~g0.arm.isin(exclude)]
        for (arm, k, restarted), ga in arms.groupby(["arm", "top_k", arms.lr_schedule == "restarted"]):
            like = base[(base.lr_schedule == "restarted") == restarted]
            b = (like if len(like) else base).groupby("seed").value.mean()
            res = tost_paired(b, ga.groupby("seed").value.mean(), margins[metric])
            unit = "nats/token" if metric == "loss" else "accuracy"
            same = len(like) > 0  # else paired with runs of the other kind: the schedule is part of the difference
            confound = "" if same else (". Confounded: one side restarted its LR schedule (warm-up, cosine and "
                                        "optimiser of its own), the other did not; the difference includes it.")
            chance = float(ga.chance.iloc[0])
            failed = _not_learned(metric, b, ga.value, chance)
            if failed:
                confound += (f". Not learned: both sides below {LEARNED_OVER_CHANCE:g}x chance ({chance:.4f}); the "
                             "verdict compares two failures and says nothing about selection.")
            rows.append({"experiment": exp, "task": task, "seq_len": length, "top_k": k, "arm": arm,
                         "restarted": bool(restarted), "baseline": baseline, "metric": metric,
                         "n_seeds": res["n_pairs"], "diff": res["diff"], "margin": res["margin"],
                         "resolution": res["resolution"], "verdict": res["verdict"],
                         "noise_floor": noise if noise is not None else math.nan, "same_lr_schedule": same,
                         "learned": not failed,
                         "verdict_text": verdict_text(res, unit=unit, noise=noise) + confound})
    return pd.DataFrame(rows)


def design_table(configs: Sequence) -> pd.DataFrame:
    """The design of a long-context experiment from its configs: per (task, arm, L, k) the runs, seeds, the
    first global LM step (a continued arm's start_step) and the LM steps of each run."""
    from dsa.train.long_context import design_of  # noqa: PLC0415

    rows = [{**design_of(c), "steps": c.steps, "first_step": c.start_step, "seed": c.seed, "n_kv_heads": c.n_kv_heads}
            for c in configs]
    df = pd.DataFrame(rows)
    g = df.groupby(["task", "arm", "seq_len", "top_k"], dropna=False)
    out = g.agg(runs=("seed", "size"), seeds=("seed", "nunique"), first_step=("first_step", "min"),
                steps=("steps", "max"), layout=("layout", "first")).reset_index()
    out["k/L"] = [f"1/{int(round(l / k))}" for l, k in zip(out.seq_len, out.top_k)]
    return out


def not_recorded(records: Sequence[dict], expected: Sequence) -> pd.DataFrame:
    """Which (task, arm, L, k) cells of ``expected`` (configs) have no recorded run, with the seeds missing."""
    from dsa.train.long_context import design_of  # noqa: PLC0415

    have = {(_ident(r)["task"], _ident(r)["arm"], _ident(r)["seq_len"], _ident(r)["top_k"], _ident(r)["seed"])
            for r in records}
    miss: dict = {}
    for c in expected:
        d = design_of(c)
        key = (d["task"], d["arm"], c.seq_len, c.top_k)
        if (*key, c.seed) not in have:
            miss.setdefault(key, set()).add(c.seed)
    return pd.DataFrame([{"task": k[0], "arm": k[1], "seq_len": k[2], "top_k": k[3],
                          "seeds missing": ", ".join(map(str, sorted(v)))} for k, v in sorted(miss.items(), key=str)])


__all__ = ["arm_verdicts", "design_table", "far_context_check", "lr_schedule", "not_recorded", "pooled_accuracy",
           "run_metrics", "task_table", "text_table"]
