"""The commands (dsa.commands, dsa.cli): every flag documented, every bad value refused before any work with
``error: ...`` and exit status 2, ``--config FILE`` under the flags, ``python -m dsa``, console scripts."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import torch

from dsa import commands

REPO = Path(__file__).resolve().parents[1]
CUDA = torch.cuda.is_available()


class WorkStarted(Exception):
    """Raised by every patched entry into real work (data, training, timing, notebooks)."""


@pytest.fixture
def no_work(monkeypatch):
    """Every function that loads data or starts work raises WorkStarted (carrying its arguments)."""
    import dsa.bench.decode
    import dsa.bench.indexer
    import dsa.bench.kernels
    import dsa.bench.launch_profile
    import dsa.bench.layer
    import dsa.bench.map
    import dsa.bench.mla
    import dsa.bench.step_profile
    import dsa.inference.export
    import dsa.study.readme_figures
    import dsa.study.report
    import dsa.text.corpus
    import dsa.train.sweep
    import dsa.train.trainer

    def stop(*args, **kwargs):
        raise WorkStarted(*args, *kwargs.values())

    for module, names in ((dsa.text.corpus, ("load_corpus",)), (dsa.train.trainer, ("train", "_load_data")),
                          (dsa.train.sweep, ("run_sweeps", "submit_shards")),
                          (dsa.bench.kernels, ("bench", "run")), (dsa.bench.layer, ("bench", "run")),
                          (dsa.bench.step_profile, ("run", "profile_variant")),
                          (dsa.bench.map, ("run",)), (dsa.bench.mla, ("run",)), (dsa.bench.decode, ("run",)),
                          (dsa.bench.launch_profile, ("run",)),
                          (dsa.bench.indexer, ("run",)), (dsa.inference.export, ("_load_model", "export_onnx")),
                          (dsa.study.readme_figures, ("write_readme_figures",)),
                          (dsa.study.report, ("run_report",))):
        for name in names:
            monkeypatch.setattr(module, name, stop)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


def _parser_of(name: str, monkeypatch) -> argparse.ArgumentParser:
    """The parser command ``name`` builds (caught at its parse_args call, before it parses)."""
    seen = []

    def catch(self, *args, **kwargs):
        seen.append(self)
        raise WorkStarted

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", catch)
    with pytest.raises(WorkStarted):
        commands.load(name)([], prog=f"python -m dsa {name}")
    return seen[0]


@pytest.mark.parametrize("name", list(commands.COMMANDS))
def test_every_flag_of_every_command_has_help(name, monkeypatch):
    p = _parser_of(name, monkeypatch)
    undocumented = [a.dest for a in p._actions if not (a.help and a.help.strip() and a.help != argparse.SUPPRESS)]
    assert not undocumented, f"{name}: flags without help: {undocumented}"
    text = p.format_help()  # every %(default)s expands
    assert "usage: python -m dsa " + name in text
    for a in p._actions:
        if a.choices:
            assert all(str(c) in text for c in a.choices), f"{name} {a.dest}: choices not shown"


@pytest.mark.parametrize("name,config", [("train", "dsa.train.trainer:TrainConfig"),
                                         ("map", "dsa.bench.map:MapConfig"),
                                         ("bench-mla", "dsa.bench.mla:MLABenchConfig")])
def test_flags_come_from_the_config_fields(name, config, monkeypatch):
    import importlib
    from dataclasses import fields

    module, cls = config.split(":")
    p = _parser_of(name, monkeypatch)
    by_dest = {a.dest: a for a in p._actions}
    for f in fields(getattr(importlib.import_module(module), cls)):
        if f.metadata.get("cli") is False:  # set by code, not a flag
            assert f.name not in by_dest
            continue
        assert by_dest[f.name].help.startswith(f.metadata["help"])
        assert by_dest[f.name].choices == f.metadata.get("choices")


def test_a_field_without_help_is_refused():
    from dataclasses import dataclass, field

    from dsa.cli import add_dataclass_flags

    @dataclass
    class Undocumented:
        x: int = field(default=1, metadata={"help": "documented"})
        y: int = 2

    with pytest.raises(ValueError, match="'y' has no help"):
        add_dataclass_flags(argparse.ArgumentParser(), Undocumented)


_TRAIN_BAD = [
    (["--n-heads", "3"], "n_heads"), (["--n-kv-heads", "3"], "n_kv_heads"),
    (["--indexer-rope-dim", "3"], "indexer_rope_dim"), (["--k-policy", "foo"], "--k-policy"),
    (["--impl", "foo"], "--impl"), (["--leak-future"], "leak_future"), (["--data", "nope"], "data"),
    (["--data", "file:/no/such/file.txt"], "data"), (["--vocab-size", "0"], "vocab_size"),
    (["--vocab-size", "100"], "vocab_size"), (["--k-mass", "5"], "k_mass"), (["--k-mass", "0"], "k_mass"),
    (["--lr", "nan"], "lr"), (["--lr", "0"], "lr"), (["--lr", "inf"], "lr"), (["--indexer-lr", "-1"], "indexer_lr"),
    (["--n-layers", "0"], "n_layers"), (["--d-model", "-4"], "d_model"), (["--seq-len", "0"], "seq_len"),
    (["--seq-len", "32"], "top_k"), (["--top-k", "0"], "top_k"), (["--batch-size", "0"], "batch_size"),
    (["--steps", "0"], "steps"), (["--steps", "x"], "--steps"), (["--eval-every", "0"], "eval_every"),
    (["--eval-batches", "-1"], "eval_batches"), (["--head-dim", "7"], "head_dim"), (["--head-dim", "0"], "head_dim"),
    (["--indexer-dim", "0"], "indexer_dim"), (["--indexer-heads", "0"], "indexer_heads"),
    (["--indexer-dim", "8", "--indexer-rope-dim", "16"], "indexer_rope_dim"),
    (["--min-lr-ratio", "1.5"], "min_lr_ratio"), (["--weight-decay", "-0.1"], "weight_decay"),
    (["--grad-clip", "0"], "grad_clip"), (["--lr-warmup-steps", "-1"], "lr_warmup_steps"),
    (["--seed", "-1"], "seed"), (["--data-seed", "-1"], "data_seed"), (["--attention", "sparse"], "--attention"),
    (["--recipe", "magic"], "--recipe"), (["--tokenizer", "char"], "--tokenizer"),
    (["--precision", "fp8"], "--precision"), (["--device", "tpu9"], "device"), (["--out", "."], "out"),
    (["--indexer-kl"], "indexer_kl"), (["--dense-steps", "10"], "dense_steps"),
    (["--attention", "dsa", "--dense-steps", "200"], "dense_steps"),
    (["--attention", "dsa", "--warmup-steps", "-1"], "warmup_steps"),
    (["--attention", "dsa", "--recipe", "scratch", "--warmup-steps", "5"], "indexer_kl"),
    (["--start-step", "-1"], "start_step"), (["--start-step", "5"], "start_step (5) > 0 continues a run: init_from"),
    (["--schedule-steps", "50"], "schedule_steps"), (["--schedule-steps", "0"], "schedule_steps"),
]
_CPU_ONLY = [  # what this machine cannot run: refused here, not after the data loaded
    (["--device", "cuda"], "cuda"), (["--device", "cuda:0"], "cuda"), (["--precision", "bf16"], "bf16"),
    (["--attention", "dsa", "--impl", "triton"], "triton"),
]
_OTHER_BAD = [
    ("sweep", [], "EXPERIMENT"), ("sweep", ["nope"], "EXPERIMENT"),
    ("sweep", ["ablation_kl", "--size", "huge"], "--size"),
    ("sweep", ["ablation_kl", "--steps", "0"], "--steps"), ("sweep", ["ablation_kl", "--limit", "0"], "--limit"),
    ("sweep", ["ablation_kl", "--workers-per-device", "0"], "--workers-per-device"),
    ("sweep", ["ablation_kl", "--time-budget-s", "nan"], "--time-budget-s"),
    ("sweep", ["ablation_kl", "--time-budget-s", "-1"], "--time-budget-s"),
    ("sweep", ["ablation_kl", "--stale-after-s", "0"], "--stale-after-s"),
    ("sweep", ["ablation_kl", "--shard", "2/2"], "--shard"), ("sweep", ["ablation_kl", "--shard", "x"], "--shard"),
    ("sweep", ["ablation_kl", "--shards", "2"], "--slurm"), ("sweep", ["ablation_kl", "--wait"], "--slurm"),
    ("sweep", ["ablation_kl", "--slurm", "=x"], "--slurm"),
    ("sweep", ["ablation_kl", "--slurm", "cluster=local", "--shard", "0/2"], "--shard"),
    ("sweep", ["ablation_kl", "exp3_adaptive", "--out", "x.jsonl"], "--out"),
    ("sweep", ["ablation_kl", "--out", "x.jsonl", "--out-dir", "d"], "--out-dir"),
    ("sweep", ["ablation_kl", "--out", "."], "--out"), ("sweep", ["ablation_kl", "--devices", "tpu9"], "--devices"),
    ("bench", ["--seq-lens", "0"], "seq_lens"), ("bench", ["--seq-lens", "16", "--top-k", "64"], "seq_lens"),
    ("bench", ["--top-k", "-1"], "top_k"), ("bench", ["--heads", "0"], "heads"),
    ("bench", ["--kv-heads", "3"], "kv_heads"),
    ("bench", ["--head-dim", "0"], "head_dim"), ("bench", ["--indexer-heads", "0"], "indexer_heads"),
    ("bench", ["--indexer-dim", "-2"], "indexer_dim"), ("bench", ["--masked-max-len", "-1"], "masked_max_len"),
    ("bench", ["--heads", "nan"], "--heads"), ("bench", ["--out", "."], "--out"),
    ("bench-layer", ["--seq-lens", "0"], "seq_lens"), ("bench-layer", ["--top-k", "0"], "top_k"),
    ("bench-layer", ["--seq-lens", "16", "--top-k", "32"], "top_k"), ("bench-layer", ["--kv-heads", "3"], "n_kv_heads"),
    ("bench-layer", ["--head-dim", "7"], "head_dim"), ("bench-layer", ["--d-model", "0"], "d_model"),
    ("bench-layer", ["--indexers", "4by64"], "HEADSxDIM"),
    ("bench-layer", ["--indexer-rope-dim", "3"], "indexer_rope_dim"),
    ("bench-layer", ["--indexer-rope-dim", "32"], "indexer_rope_dim"), ("bench-layer", ["--device", "tpu"], "--device"),
    ("bench-layer", ["--seed", "-1"], "seed"), ("bench-layer", ["--out", "."], "--out"),
    ("profile", ["--n-heads", "3"], "n_heads"), ("profile", ["--n-kv-heads", "3"], "n_kv_heads"),
    ("profile", ["--top-k", "0"], "top_k"), ("profile", ["--top-k", "999"], "top_k"),
    ("profile", ["--steps", "0"], "steps"),
    ("profile", ["--warmup", "-1"], "warmup"), ("profile", ["--profile-steps", "0"], "profile_steps"),
    ("profile", ["--indexer-rope-dim", "3"], "indexer_rope_dim"), ("profile", ["--vocab-size", "0"], "vocab_size"),
    ("profile", ["--batch-size", "0"], "batch_size"), ("profile", ["--head-dim", "7"], "head_dim"),
    ("profile", ["--variants", "sparse"], "variant"), ("profile", ["--variants", "dsa:cuda"], "variant"),
    ("profile", ["--variants", "dense", "dsa:triton"], "triton"), ("profile", ["--device", "tpu9"], "device"),
    ("map", ["--layouts", "mqa65"], "--layouts"), ("map", ["--seq-lens", "0"], "seq_lens"),
    ("map", ["--top-k", "0"], "top_k"), ("map", ["--seq-lens", "16", "--top-k", "32"], "top_k"),
    ("map", ["--d-model", "0"], "d_model"), ("map", ["--reps", "0"], "reps"), ("map", ["--budget-s", "-1"], "budget_s"),
    ("map", ["--budget-s", "nan"], "budget_s"), ("map", ["--indexers", "4by64"], "HEADSxDIM"),
    ("map", ["--indexers", "4x64:fp4"], "bf16 or fp8"), ("map", ["--device", "tpu"], "--device"),
    ("map", ["--seed", "-1"], "seed"), ("map", ["--out", "."], "--out"),
    ("bench-mla", ["--layouts", "mla7"], "--layouts"), ("bench-mla", ["--dkv", "sorted"], "--dkv"),
    ("bench-mla", ["--tiles", "fwd:64:32"], "fwd|bwd"), ("bench-mla", ["--top-k", "0"], "top_k"),
    ("bench-mla", ["--seq-lens", "0"], "seq_lens"), ("bench-mla", ["--inverted-max-len", "0"], "inverted_max_len"),
    ("bench-mla", ["--seed", "-1"], "seed"), ("bench-mla", ["--device", "tpu"], "--device"),
    ("bench-mla", ["--out", "."], "--out"),
    ("decode-bench", ["--layouts", "gqa"], "--layouts"), ("decode-bench", ["--contexts", "0"], "contexts"),
    ("decode-bench", ["--batches", "0"], "batches"), ("decode-bench", ["--top-k", "0"], "top_k"),
    ("decode-bench", ["--contexts", "64", "--top-k", "500"], "top_k"),
    ("decode-bench", ["--indexer", "4by16"], "HEADSxDIM"),
    ("decode-bench", ["--request-contexts", "0"], "request_contexts"),
    ("decode-bench", ["--request-batch", "0"], "request_batch"), ("decode-bench", ["--gen-tokens", "0"], "gen_tokens"),
    ("decode-bench", ["--max-cache-gib", "0"], "max_cache_gib"), ("decode-bench", ["--seed", "-1"], "seed"),
    ("decode-bench", ["--device", "tpu"], "--device"), ("decode-bench", ["--out", "."], "--out"),
    ("indexer-bench", ["--heads", "0"], "--heads"), ("indexer-bench", ["--dim", "24"], "--dim"),
    ("indexer-bench", ["--top-k", "0"], "--top-k"), ("indexer-bench", ["--chunk", "0"], "--chunk"),
    ("indexer-bench", ["--recall-len", "2"], "--recall-len"), ("indexer-bench", ["--seq-lens", "16"], "--seq-lens"),
    ("indexer-bench", ["--tiles", "64x64"], "--tiles"), ("indexer-bench", ["--out", "."], "--out"),
    ("export", [], "--checkpoint"), ("export", ["--checkpoint", "nope.pt", "--output", "x.onnx"], "--checkpoint"),
    ("export", ["--checkpoint", "pyproject.toml", "--output", "x.onnx", "--seq-len", "0"], "--seq-len"),
    ("export", ["--checkpoint", "pyproject.toml", "--output", "x.onnx", "--batch-size", "0"], "--batch-size"),
    ("export", ["--checkpoint", "pyproject.toml", "--output", "x.onnx", "--opset", "0"], "--opset"),
    ("export", ["--checkpoint", "pyproject.toml", "--output", "x.onnx", "--exporter", "jit"], "--exporter"),
    ("export", ["--checkpoint", "pyproject.toml", "--output", "."], "--output"),
    ("readme-figures", ["--dpi", "10"], "--dpi"), ("readme-figures", ["--dpi", "x"], "--dpi"),
    ("readme-figures", ["--out-dir", "pyproject.toml"], "--out-dir"),
    ("report", ["--params", "nope"], "--params"), ("report", ["--only", "99"], "--only"),
    ("report", ["--cell-timeout", "0"], "--cell-timeout"), ("report", ["--out", "pyproject.toml"], "--out"),
]
_CASES = ([("train", argv, named) for argv, named in _TRAIN_BAD]
          + ([] if CUDA else [("train", argv, named) for argv, named in _CPU_ONLY]
             + [(c, ["--device", "cuda"], "cuda") for c in ("bench-layer", "profile", "map", "bench-mla",
                                                            "decode-bench")])
          + _OTHER_BAD)


@pytest.mark.parametrize("name,argv,named", _CASES, ids=[f"{c}:{' '.join(a)}" for c, a, _ in _CASES])
def test_bad_values_exit_2_naming_the_flag_before_any_work(name, argv, named, no_work, capsys, monkeypatch,
                                                           tmp_path):
    monkeypatch.chdir(REPO)
    with pytest.raises(SystemExit) as e:
        commands.load(name)(argv, prog=f"python -m dsa {name}")
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert "error: " in err and named in err.split("error: ", 1)[1], err
    assert "Traceback" not in err


@pytest.mark.skipif(CUDA, reason="checks what a machine without CUDA refuses")
@pytest.mark.parametrize("kw", [{"device": "cuda"}, {"precision": "bf16"}, {"attention": "dsa", "impl": "triton"}])
def test_the_library_refuses_what_this_machine_cannot_run_before_the_data_loads(kw, monkeypatch):
    """A config naming a device this machine lacks still constructs (recorded GPU runs are rebuilt on CPU
    machines); train() refuses it before any data loads."""
    import dsa.train.trainer as trainer

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(trainer, "_load_data", lambda cfg: (_ for _ in ()).throw(WorkStarted()))
    cfg = trainer.TrainConfig(**kw)
    with pytest.raises(ValueError, match="needs|not available"):
        trainer.train(cfg)


@pytest.mark.parametrize("suffix", ["yaml", "json"])
def test_train_config_file_under_the_flags(suffix, tmp_path, no_work):
    from dsa.train.cli import build_train_parser, train_config_from_args

    values = {"attention": "dsa", "seq_len": 32, "top-k": 8, "leak_future": True, "lr": 1e-3, "progress": False}
    path = tmp_path / f"c.{suffix}"
    path.write_text(json.dumps(values))  # JSON is YAML too
    cfg, _ = train_config_from_args(build_train_parser(), ["--config", str(path), "--top-k", "4"])
    assert (cfg.attention, cfg.seq_len, cfg.top_k, cfg.leak_future, cfg.lr, cfg.progress) == (
        "dsa", 32, 4, True, 1e-3, False)
    cfg, _ = train_config_from_args(build_train_parser(), ["--config", str(path), "--no-leak-future"])
    assert cfg.top_k == 8 and not cfg.leak_future


@pytest.mark.parametrize("content,named", [
    ("seq_len: 32\nsequence_length: 64\n", "'sequence_length'"), ("seq_len: abc\n", "seq-len"),
    ("k_policy: foo\n", "k-policy"), ("leak_future: 3\n", "--leak-future"), ("- 1\n- 2\n", "mapping"),
    ("seq_len: [1\n", "parse"), ("n_heads: 3\n", "n_heads"),
])
def test_a_bad_config_file_exits_2_naming_the_key(content, named, tmp_path, no_work, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(content)
    with pytest.raises(SystemExit) as e:
        commands.load("train")(["--config", str(path)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "error: " in err and named in err and "Traceback" not in err, err


def test_a_missing_config_file_exits_2(tmp_path, no_work, capsys):
    with pytest.raises(SystemExit) as e:
        commands.load("bench")(["--config", str(tmp_path / "none.yaml")])
    assert e.value.code == 2 and "--config" in capsys.readouterr().err


@pytest.mark.parametrize("name,values,argv,check", [
    ("sweep", {"experiment": ["ablation_kl"], "steps": 3, "limit": 1}, ["--limit", "2"],
     lambda a: [len(c) for c, _ in a[0]] == [2] and a[0][0][0][0].steps == 3),
    ("sweep", {"experiment": "ablation_kl", "limit": 1}, ["exp3_adaptive"],
     lambda a: [Path(r).name for _, r in a[0]] == ["exp3_adaptive-small.jsonl"]),
    ("bench", {"seq_lens": [64, 128], "top_k": [16], "heads": 4, "flex": False}, ["--heads", "8"],
     lambda a: (a[0].seq_lens, a[0].top_k, a[0].heads, a[0].flex) == ([64, 128], [16], 8, False)),
    ("bench-layer", {"seq_lens": [32], "top_k": 8, "indexers": ["2x8"]}, ["--top-k", "4"],
     lambda a: (a[0].seq_lens, a[0].top_k, a[0].indexers) == ([32], 4, ["2x8"])),
    ("profile", {"seq_len": 64, "top_k": 16, "variants": ["dsa"]}, ["--top-k", "8"],
     lambda a: (a[0].seq_len, a[0].top_k, a[1]) == (64, 8, ["dsa"])),
    ("map", {"layouts": ["tiny-mqa"], "seq_lens": [32], "top_k": 8}, ["--top-k", "4"],
     lambda a: (a[0].layouts, a[0].seq_lens, a[0].top_k) == (["tiny-mqa"], [32], 4)),
    ("bench-mla", {"seq_lens": [48], "dkv": ["atomic"], "check": True}, ["--no-check"],
     lambda a: (a[0].seq_lens, a[0].dkv, a[0].check) == ([48], ["atomic"], False)),
    ("decode-bench", {"contexts": [64], "top_k": 8, "no_graphs": True, "device": "cpu"}, ["--top-k", "4"],
     lambda a: (a[0].contexts, a[0].top_k, a[0].cuda_graphs) == ([64], 4, False)),
])
def test_config_file_of_each_command(name, values, argv, check, tmp_path, no_work):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(values))
    with pytest.raises(WorkStarted) as w:
        commands.load(name)(["--config", str(path), *argv])
    assert check(w.value.args), w.value.args


def test_python_m_dsa_lists_the_commands(capsys):
    assert commands.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name, cmd in commands.COMMANDS.items():
        assert f"  {name}" in out and cmd.summary in out
    assert commands.main([]) == 2 and "error: give a command" in capsys.readouterr().err
    assert commands.main(["nope"]) == 2 and "unknown command 'nope'" in capsys.readouterr().err


def test_console_scripts_are_the_registry_and_run(capsys):
    """pyproject's [project.scripts] maps each dsa-<name> to the registry's target of <name> (a new command
    needs only its registry line; a script for it is optional); each one, imported from its string and called
    with argv, parses its options."""
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert {"dsa-train", "dsa-sweep", "dsa-bench", "dsa-bench-layer", "dsa-profile", "dsa-report"} <= set(scripts)
    for script, target in scripts.items():
        assert commands.COMMANDS[script.removeprefix("dsa-")].target == target, script
    for script, target in scripts.items():
        module, function = target.split(":")
        fn = getattr(__import__(module, fromlist=[function]), function)
        with pytest.raises(SystemExit) as e:
            fn(["--help"])
        assert e.value.code == 0 and "usage:" in capsys.readouterr().out, script


@pytest.mark.parametrize("argv", [
    ["-m", "dsa", "train", "--n-layers", "0"], ["-m", "dsa.train", "--lr", "nan"],
    ["-m", "dsa.train.sweep", "nope"], ["-m", "dsa.bench.kernels", "--heads", "0"],
    ["-m", "dsa.bench.layer", "--top-k", "0"], ["-m", "dsa.bench.step_profile", "--steps", "0"],
    ["-m", "dsa.study.report", "--only", "99"], ["-m", "dsa", "map", "--top-k", "0"],
    ["-m", "dsa.bench.mla", "--seed", "-1"], ["-m", "dsa.bench.decode", "--batches", "0"],
    ["-m", "dsa.bench.indexer", "--heads", "0"], ["-m", "dsa.inference.export", "--output", "x.onnx"],
    ["-m", "dsa.study.readme_figures", "--dpi", "1"],
], ids=lambda a: " ".join(a[1:3]))
def test_module_entry_points_exit_2_without_a_traceback(argv):
    proc = subprocess.run([sys.executable, *argv], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 2 and "error: " in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
