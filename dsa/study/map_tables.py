"""The map of where DSA pays: ratios, the cost model and the crossover L from ``dsa.bench.map`` records.

Records hold raw milliseconds only (``dense_<backend>_<pass>_ms``, ``dsa_<pass>_ms``); everything here is
derived: the best dense backend per (layout, L, pass), speed-up = best dense ms / DSA ms (above 1: DSA is
faster), the cost model's speed-up beside it, and per layout and indexer the smallest measured L from which
DSA beats the best dense kernel.

Cost model (attention and indexer only; the projections are the same work in both layers and left out):
time = max(FLOPs / matrix rate, bytes / bandwidth) per part, each part at the ceiling given by
:class:`Ceilings` (by default the H200's measured bf16 and FP8 matrix rates and its bandwidth). Dense:
L(L+1)/2 pairs at :func:`dsa.ops.flops.attention_pair_flops` of the dense form (MLA: MHA mode). DSA: the
sparse attention over sum_t min(t+1, k) pairs (FLOPs and the gathered bytes of
:func:`dsa.ops.flops.sparse_pair_bytes`), the indexer over all L(L+1)/2 pairs (FP8 at the FP8 rate), the
top-k as one write and one read of the fp32 score triangle; training adds the KL loss's indexer backward at
the selected pairs (2x its forward) and the attention backward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
import pandas as pd

from dsa.ops.flops import attention_pair_flops, indexer_pair_flops, sparse_pair_bytes

PASSES = ("fwd", "fwdbwd")
PASS_LABELS = {"fwd": "prefill (forward)", "fwdbwd": "training (forward + backward)"}
# The map's layout names and the decode benchmark's, for the same shapes (MLA in MQA mode; MQA 64 x 128).
LAYOUT_NAMES = {"mla128": "MLA-MQA 128 x 576/512", "mla": "MLA-MQA 128 x 576/512",
                "mqa64": "MQA 64 x 128", "mqa": "MQA 64 x 128", "gqa16/2": "GQA 16/2 x 128", "mha16": "MHA 16 x 128"}
BACKEND_LABELS = {"cudnn": "cuDNN SDPA", "flash": "flash SDPA", "flex": "FlexAttention", "math": "SDPA math (CPU)"}


@dataclass(frozen=True)
class Ceilings:
    """Rates the cost model divides by: bf16 and FP8 matrix FLOP/s and device-memory bytes/s (H200,
    measured: ../shared/notes/where_dsa_pays.md; bandwidth: the datasheet's 4.8 TB/s at 85%)."""

    bf16_flops: float = 758e12
    fp8_flops: float = 1323e12
    bytes_per_s: float = 4.1e12


def _pairs(l: float, k: float | None) -> float:
    return l * (l + 1) / 2 if k is None else min(k, l) * (min(k, l) + 1) / 2 + max(l - k, 0) * k


def model_ms(row: dict, pass_: str, ceil: Ceilings = Ceilings()) -> tuple[float, float]:
    """(dense ms, DSA ms) of the cost model for one map row (its layout, L, k, indexer) and pass."""
    l, k, bwd = float(row["L"]), float(row["k"]), pass_ == "fwdbwd"
    dense_f = attention_pair_flops(row["H"], row["dense_d_qk"], row["dense_d_v"])
    if bwd:
        dense_f += attention_pair_flops(row["H"], row["dense_d_qk"], row["dense_d_v"], backward=True)
    dense = _pairs(l, None) * dense_f / ceil.bf16_flops
    sp = _pairs(l, k)
    att_f = attention_pair_flops(row["H"], row["d_qk"], row["d_v"]) + \
        (attention_pair_flops(row["H"], row["d_qk"], row["d_v"], backward=True) if bwd else 0)
    att = max(sp * att_f / ceil.bf16_flops, sp * sparse_pair_bytes(row["H_kv"], row["d_qk"], row["d_v"], bwd) /
              ceil.bytes_per_s)
    rate = ceil.fp8_flops if row.get("indexer_precision") == "fp8" else ceil.bf16_flops
    idx_f = indexer_pair_flops(row["H_I"], row["d_I"])
    indexer = _pairs(l, None) * idx_f / rate + (sp * 2 * idx_f / ceil.bf16_flops if bwd else 0.0)
    topk = 2 * 4 * _pairs(l, None) / ceil.bytes_per_s
    return dense * 1e3, (att + indexer + topk) * 1e3


# a map point: the same layout, L, k, indexer and pass on the same device
POINT = ["device", "layout", "L", "k", "indexer", "pass"]


def map_frame(results: Iterable[dict]) -> pd.DataFrame:
    """One row per map point (:data:`POINT`): dense ms per backend, the best dense backend and its ms, DSA ms,
    the measured speed-up over the best dense and over cuDNN, and the cost model's speed-up. A point measured
    by several files takes the newest file's row (by provenance date) that timed the DSA layer, else the
    newest row (``superseded`` counts the rows it replaced; ``commit`` / ``date`` name its file's): a re-run
    after a kernel change replaces the old numbers instead of being averaged or drawn beside them; ``stale``
    marks the rows of the series that the re-run did not reach."""
    rows = []
    for res in results:
        prov = res.get("provenance", {})
        dev = prov.get("device", "?")
        for r in res["rows"]:
            indexer = f"{r['H_I']}x{r['d_I']} {r.get('indexer_precision', 'bf16')}"
            for pass_ in PASSES:
                dense = {b: r.get(f"dense_{b}_{pass_}_ms") for b in BACKEND_LABELS if f"dense_{b}_{pass_}_ms" in r}
                ok = {b: v for b, v in dense.items() if v}
                best = min(ok, key=ok.get) if ok else None
                dsa = r.get(f"dsa_{pass_}_ms")
                m_dense, m_dsa = model_ms(r, pass_)
                rows.append({
                    "device": dev, "layout": r["layout"], "L": r["L"], "k": r["k"], "indexer": indexer,
                    "pass": pass_, **{f"{b}_ms": v for b, v in dense.items()},
                    "best_dense": BACKEND_LABELS[best] if best else None, "best_dense_ms": ok.get(best),
                    "dsa_ms": dsa, "dsa_why": r.get(f"dsa_{pass_}_why"),
                    "speedup": ok[best] / dsa if best and dsa else np.nan,
                    "speedup_cudnn": ok["cudnn"] / dsa if ok.get("cudnn") and dsa else np.nan,
                    "model_speedup": m_dense / m_dsa, "model_dense_ms": m_dense, "model_dsa_ms": m_dsa,
                    "commit": str(prov.get("git_commit") or "")[:7], "date": str(prov.get("date") or ""),
                })
    return _newest_per_point(pd.DataFrame(rows))


def _newest_per_point(df: pd.DataFrame) -> pd.DataFrame:
    """The newest timed row per point, with ``superseded`` (rows it replaced) and ``stale``: the row is older
    than a file that timed the same series (device, layout, k, indexer, pass) again at another point, i.e.
    it predates a change the newer run measured (its DSA time is not comparable with that run's)."""
    if df.empty:
        return df.assign(superseded=pd.Series(dtype=int), stale=pd.Series(dtype=bool))
    df = df.assign(_timed=df.dsa_ms.notna()).sort_values(["_timed", "date"], kind="stable")
    df["superseded"] = df.groupby(POINT)["L"].transform("size") - 1
    retimed = df.groupby(POINT)["_timed"].transform("sum") > 1  # a timed row replaced a timed row
    df = df.drop_duplicates(POINT, keep="last")
    series = [c for c in POINT if c != "L"]
    last_retime = df.assign(_d=df.date.where(retimed.loc[df.index])).groupby(series)["_d"].transform("max")
    df["stale"] = df.date < last_retime.fillna("")
    return df.drop(columns="_timed").sort_values(POINT, kind="stable").reset_index(drop=True)


def crossover(df: pd.DataFrame) -> pd.DataFrame:
    """Per (device, layout, indexer, pass): the smallest measured L from which DSA beats the best dense kernel
    at every larger measured L, and the cost model's smallest such L among the same lengths. A text cell
    says so when it never does (or nothing was measured)."""
    out = []
    for (dev, layout, indexer, pass_), d in df.groupby(["device", "layout", "indexer", "pass"], sort=True):
        d = d.sort_values("L")
        out.append({"device": dev, "layout": layout, "indexer": indexer, "pass": PASS_LABELS[pass_],
                    "DSA faster from L": _first_winning(d.L, d.speedup),
                    "model: faster from L": _first_winning(d.L, d.model_speedup),
                    "largest L measured": int(d.L[d.speedup.notna()].max()) if d.speedup.notna().any() else "none",
                    "speed-up there": d.speedup[d.speedup.notna()].iloc[-1] if d.speedup.notna().any() else "n/a"})
    return pd.DataFrame(out)


def _first_winning(ls: pd.Series, speedups: pd.Series) -> int | str:
    valid = speedups.notna().to_numpy()
    if not valid.any():
        return "not measured"
    ls, sp = ls.to_numpy()[valid], speedups.to_numpy()[valid]
    wins = sp > 1.0
    if not wins[-1]:
        return f"not up to {int(ls[-1])}"
    first = len(wins) - int(np.argmin(wins[::-1])) if not wins.all() else 0
    return int(ls[first])


def long_speedups(df: pd.DataFrame) -> pd.DataFrame:
    """Measured and modelled speed-ups in one long frame for plotting (source: 'measured' / 'cost model')."""
    meas = df.assign(source="measured", value=df.speedup)
    model = df.assign(source="cost model", value=df.model_speedup)
    out = pd.concat([meas, model], ignore_index=True)
    out["pass"] = out["pass"].map(PASS_LABELS)
    return out.dropna(subset=["value"])


def launch_profile_frame(results: Iterable[dict]) -> pd.DataFrame:
    """One row per (profile file's row, category) from :mod:`dsa.bench.launch_profile` results: device,
    layout, L, indexer ('HxD precision'), layer, pass (labelled as PASS_LABELS), category, ms per call and
    share of the (layer, pass)'s kernel time."""
    rows = []
    for res in results:
        dev = res.get("provenance", {}).get("device", "?")
        for r in res["rows"]:
            for cat, v in r["categories"].items():
                rows.append({"device": dev, "layout": r["layout"], "L": r["L"],
                             "indexer": f"{r['H_I']}x{r['d_I']} {r['indexer_precision']}",
                             "layer": "dense" if r["layer"] == "dense" else "DSA",
                             "pass": PASS_LABELS[r["pass"]], "category": cat, "ms": v["ms"], "share": v["share"]})
    return pd.DataFrame(rows, columns=["device", "layout", "L", "indexer", "layer", "pass", "category", "ms",
                                       "share"])
