"""The design factors of the study's runs, as ``dsa.train.experiments`` records them in ``TrainConfig.design``,
and the labels the study's tables and verdicts read back: built here once, never decoded from k and L.

Torch-free, so the study's tables can import it without the trainer::

    {"experiment": "exp5_sparsity",  # the experiment that designed the run
     "arm": "DSA deepseek",          # arm_label(): dense | DSA scratch (leaky) | DSA scratch | DSA deepseek[, k=mass]
     "ratio": 0.33,                  # the designed k/L of a DSA run (an adaptive rule's cap); k = round(ratio * L)
     "k_rule": "0.33·L",             # the same as text: 'L/2', 'L/8', '0.33·L'
     "ablation": "heads", "level": 4}  # ablations only: which one and the ablated value
"""

from __future__ import annotations

from fractions import Fraction

DENSE = "dense"
LEAKY = "DSA scratch (leaky)"  # the seeds' sparse attention: no causal guard on the top-k
SCRATCH = "DSA scratch"
DEEPSEEK = "DSA deepseek"
ARMS = (DENSE, LEAKY, SCRATCH, DEEPSEEK)

SPARSITY_RATIOS = (0.25, 0.33, 0.5, 0.67, 0.75, 0.9)  # exp5's k/L levels
ABLATIONS = ("kl", "warmup", "heads")


def arm_label(attention: str, recipe: str | None, leak: bool, k_policy: str = "fixed") -> str:
    """The arm of a run: 'dense', 'DSA scratch (leaky)', 'DSA scratch', 'DSA deepseek', 'DSA deepseek, k=mass'."""
    if attention == "dense":
        return DENSE
    label = f"DSA {recipe}" + (" (leaky)" if leak else "")
    if k_policy and k_policy != "fixed":
        label += f", k={k_policy}"
    return label


def k_rule_text(ratio: float) -> str:
    """'L/2', 'L/8' for a unit fraction, else '0.33·L'."""
    f = Fraction(ratio).limit_denominator(64)
    return f"L/{f.denominator}" if f.numerator == 1 and float(f) == ratio else f"{ratio:g}·L"


__all__ = ["ABLATIONS", "ARMS", "DEEPSEEK", "DENSE", "LEAKY", "SCRATCH", "SPARSITY_RATIOS", "arm_label",
           "k_rule_text"]
