"""The project's commands: ``python -m dsa <command> ...`` and the ``dsa-<command>`` console scripts.

A command is one entry of :data:`COMMANDS`: its name, the ``module:function`` that runs it (called as
``function(argv, prog=...)``, returning the exit status; argv None = ``sys.argv[1:]``, as a console script
calls it) and one line for ``python -m dsa --help``. The modules are imported only when their command runs,
so listing the commands is instant. A console script ``dsa-<name>`` in pyproject.toml's ``[project.scripts]``
points at the same ``module:function`` (tests/test_cli.py checks they agree).
"""

from __future__ import annotations

import importlib
import sys
from typing import NamedTuple


class Command(NamedTuple):
    target: str  # "module:function"
    summary: str


COMMANDS: dict[str, Command] = {
    "train": Command("dsa.train.cli:train_main", "train one configuration (dense, DSA, sparse from scratch)"),
    "sweep": Command("dsa.train.cli:sweep_main", "run experiments' configurations, resumably (pools, shards, Slurm)"),
    "bench": Command("dsa.bench.cli:bench_main", "benchmark the attention kernels: dense baselines vs the DSA path"),
    "bench-layer": Command("dsa.bench.cli:bench_layer_main", "benchmark the model's DSA layer against its dense layer"),
    "profile": Command("dsa.bench.cli:profile_main", "profile a training step: dense vs DSA variants, op breakdown"),
    "map": Command("dsa.bench.map:main", "the map of where DSA pays: its layer vs dense per layout, indexer and L"),
    "launch-profile": Command("dsa.bench.launch_profile:main",
                              "where a map row's time goes: its dense and DSA layers per kernel launch"),
    "bench-mla": Command("dsa.bench.mla:main", "the sparse attention kernel at the MLA-MQA shape: tiles, dK/dV"),
    "decode-bench": Command("dsa.bench.decode:main", "one decode step, DSA vs dense, per cache layout, context, batch"),
    "indexer-bench": Command("dsa.bench.indexer:main", "the indexer at DeepSeek's size, bf16 vs FP8, and its top-k"),
    "long-context": Command("dsa.train.long_context:main",
                            "long-context runs: recall/needle/text tasks, DeepSeek's recipe arms, far-context checks"),
    "export": Command("dsa.inference.export:main", "export a checkpoint to ONNX and check it on onnxruntime"),
    "report": Command("dsa.study.report:main", "execute the notebooks and build the HTML report"),
    "readme-figures": Command("dsa.study.readme_figures:main", "redraw the README's key figures from data/"),
}


def load(name: str):
    """The function that runs command ``name``."""
    module, _, function = COMMANDS[name].target.partition(":")
    return getattr(importlib.import_module(module), function)


def usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = ["usage: python -m dsa <command> [options]   (python -m dsa <command> --help for its options)", "",
             "commands:"]
    lines += [f"  {name:<{width}}  {cmd.summary}" for name, cmd in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m dsa <command> [options]``: runs the command with the remaining arguments."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        print(f"{usage()}\n\npython -m dsa: error: give a command", file=sys.stderr)
        return 2
    if argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"{usage()}\n\npython -m dsa: error: unknown command {name!r} (choose from "
              f"{', '.join(COMMANDS)})", file=sys.stderr)
        return 2
    return load(name)(rest, prog=f"python -m dsa {name}")
