"""The benchmark commands: ``python -m dsa bench`` (attention kernels, :mod:`dsa.bench.kernels`),
``python -m dsa bench-layer`` (the model's layer, :mod:`dsa.bench.layer`) and ``python -m dsa profile`` (a
training step, :mod:`dsa.bench.step_profile`). Each one's flags are its config dataclass's fields; every value
is checked before any tensor is made (``error: ...``, exit status 2)."""

from __future__ import annotations

import argparse
from typing import Any

from dsa import cli
from dsa.bench import kernels, layer, step_profile
from dsa.provenance import write_json_atomic


def _parser(module: Any, config_cls: type, prog: str | None, out_help: str) -> argparse.ArgumentParser:
    return cli.config_command_parser(config_cls, prog, module.__doc__, out_help)


def bench_main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """``python -m dsa bench``: dense attention baselines vs the DSA path, a table and a JSON file."""
    p = _parser(kernels, kernels.KernelBenchConfig, prog,
                "JSON path (default runs/bench/<device>-<date>.json), rewritten after every row")
    cfg, rest = cli.checked_config(p, kernels.KernelBenchConfig, argv)
    res = kernels.bench(cfg, rest["out"])
    print(kernels.table(res))
    print(f"wrote {res['_path']}")
    return 0


def bench_layer_main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """``python -m dsa bench-layer``: the model's DSA layer against the same layer with dense attention."""
    p = _parser(layer, layer.LayerBenchConfig, prog,
                "JSON path (default runs/bench-layer-<device>.json), rewritten after every row")
    cfg, rest = cli.checked_config(p, layer.LayerBenchConfig, argv)
    res = layer.bench(cfg, rest["out"])
    print(layer.table(res))
    print(f"wrote {res['_path']}")
    return 0


def profile_main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """``python -m dsa profile``: where a training step's time goes, dense vs DSA variants."""
    p = _parser(step_profile, step_profile.StepProfileConfig, prog, "JSON path (default: none written)")
    p.add_argument("--variants", nargs="+", default=["dense", "dsa"], metavar="VARIANT",
                   help="'dense' or 'dsa[:auto|reference|triton]'; ratios are to the first (default: dense dsa)")
    p.add_argument("--ops", action="store_true", help="print each variant's top operators")
    cfg, rest = cli.checked_config(p, step_profile.StepProfileConfig, argv)
    with cli.usage_errors(p):
        step_profile.check_variants(cfg, rest["variants"])
    res = step_profile.run(cfg, rest["variants"])
    print(step_profile.table(res))
    if rest["ops"]:
        print(step_profile.ops_table(res))
    if rest["out"]:
        print(f"wrote {write_json_atomic(rest['out'], res)}")
    return 0
