"""The study's verdicts, one module per notebook, computed from run tables and never typed in:

- :mod:`.exp4` (notebook 02): the seeds' exp4 claims (loss, accuracy, speed, parity with dense);
- :mod:`.exp5` (notebook 03): the optimal k/L falls as L grows;
- :mod:`.exp3` (notebook 04): adaptive k against fixed sparsity;
- :mod:`.ablations` (notebook 06): KL loss, warm-up length, indexer heads;
- :mod:`.common`: the Verdict record, the arms' labels, summary tables with mean ± CI cells.

Every public name is re-exported here: ``from dsa.study import verdicts as V; V.exp4_verdicts(df)``.
"""

from .ablations import (
                        ABLATION_CLAIMS,
                        ABLATION_VERDICTS,
                        NOT_ENOUGH,
                        ablation_contrasts,
                        ablation_verdicts,
                        indexer_heads_verdict,
                        kl_ablation_verdict,
                        trend_verdict,
                        warmup_verdict,
)
from .common import (
                        CAUSAL,
                        DENSE,
                        EQUIV_TOL,
                        GROUP,
                        LEAKY,
                        SUMMARY_METRICS,
                        VARIANT_ORDER,
                        Verdict,
                        format_mean_ci,
                        format_summary,
                        metric_bounds,
                        summary_table,
)
from .exp3 import EXP3_CLAIMS, exp3_verdicts
from .exp4 import (
                        CLAIMED_SPEEDUP,
                        CLAIMS,
                        accuracy_verdict,
                        exp4_verdicts,
                        leak_table,
                        loss_verdict,
                        parity_verdict,
                        seeds_percent_better,
                        speed_verdict,
)
from .exp5 import exp5_verdict

__all__ = [
    "ABLATION_CLAIMS", "ABLATION_VERDICTS", "CAUSAL", "CLAIMED_SPEEDUP", "CLAIMS", "DENSE", "EQUIV_TOL",
    "EXP3_CLAIMS", "GROUP", "LEAKY", "NOT_ENOUGH", "SUMMARY_METRICS", "VARIANT_ORDER", "Verdict",
    "ablation_contrasts", "ablation_verdicts", "accuracy_verdict", "exp3_verdicts", "exp4_verdicts", "exp5_verdict",
    "format_mean_ci", "format_summary", "indexer_heads_verdict", "kl_ablation_verdict", "leak_table",
    "loss_verdict", "metric_bounds", "parity_verdict", "seeds_percent_better", "speed_verdict", "summary_table",
    "trend_verdict", "warmup_verdict",
]
