"""The experiment runner: options generated from the configs, the demo schedule, threads."""

from __future__ import annotations

import argparse
import ast
import json
import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest

from raserec_adapter import BankConfig, PretrainConfig, RAFTConfig, RAMConfig, RunOptions
from raserec_adapter.experiments import BACKBONES, DEMO, build_parser, choose_threads, parse_args
from raserec_adapter.experiments import cli as cli_module
from raserec_adapter.experiments.options import (
    RUNNER_SET,
    SECTIONS,
    attribute_docs,
    config_from_args,
    help_text,
)

ROOT = Path(__file__).resolve().parents[1]


def options_by_dest(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in parser._actions}


def test_attribute_docs_reads_the_attributes_section():
    class Example:
        """Summary line.

        Attributes:
            alpha: First line
                continued here.
            beta (int): One line.
            gamma: Mentions ``x: y`` and
                continues: with a colon.

        Example:
            >>> not_an_attribute: 1
        """

    assert attribute_docs(Example) == {
        "alpha": "First line continued here.",
        "beta": "One line.",
        "gamma": "Mentions ``x: y`` and continues: with a colon.",
    }

    class NoSection:
        """Nothing to read."""

    with pytest.raises(ValueError, match="no 'Attributes:' section"):
        attribute_docs(NoSection)


@pytest.mark.parametrize("cls", [PretrainConfig, BankConfig, RAMConfig, RAFTConfig, RunOptions])
def test_every_config_field_is_described(cls):
    assert set(attribute_docs(cls)) == {f.name for f in fields(cls)}


@pytest.mark.parametrize("backbone", ["gru4rec", "bert4rec"])  # no config defaults of their own
def test_every_config_field_has_an_option_with_the_configs_default_and_help(backbone):
    options = options_by_dest(build_parser(backbone))
    runner_options = {s for a in options.values() for s in a.option_strings}
    assert {section for section in SECTIONS} == {"pretrain", "bank", "ram", "raft"}
    seen = 0
    for section, (cls, _) in SECTIONS.items():
        docs = attribute_docs(cls)
        for f in fields(cls):
            dest = f"{section}.{f.name}"
            if dest in RUNNER_SET:  # set by one runner option, which says so in its help
                runner_option = options[RUNNER_SET[dest].lstrip("-").replace("-", "_")]
                assert f"{cls.__name__}.{f.name}" in runner_option.help
                assert dest not in options
                continue
            action = options[dest]
            assert f"--{section}.{f.name.replace('_', '-')}" in action.option_strings
            assert action.default == f.default, dest
            shown = action.help.replace(" (default: %(default)s)", "").replace("%%", "%")
            assert shown == help_text(docs[f.name]), dest
            seen += 1
    assert seen == sum(len(fields(c)) for c, _ in SECTIONS.values()) - len(RUNNER_SET)
    assert {"--seeds", "--max-len", "--threads", "--demo"} <= runner_options


def test_help_shows_every_default(monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    parser = build_parser("sasrec")
    text = " ".join(parser.format_help().split())
    for needle in [
        "--pretrain.lr FLOAT Adam learning rate. (default: 0.001)",
        "(default: random)",  # SASRec's example batching
        "--ram.k INT Memories retrieved per query. (default: 20)",
        "--bank.index-factory STR Faiss factory string;",
        "--no-pretrain.mask-false-negatives Drop in-batch",
    ]:
        assert needle in text, needle
    for action in parser._actions:
        if action.dest == "help" or isinstance(action, argparse._StoreTrueAction):
            continue  # on/off flags are off unless given
        formatted = parser.formatter_class("x")._get_help_string(action) or ""
        assert "(default:" in formatted, action.option_strings


def test_parsed_options_make_the_configs():
    args = parse_args(
        "gru4rec",
        [
            "--pretrain.lr", "0.002",
            "--pretrain.mask-false-negatives",
            "--bank.prefix-lengths", "1-2,7-",
            "--bank.kind", "torch",
            "--ram.alpha", "0.3",
            "--raft.precision", "bfloat16",
        ],
    )  # fmt: skip
    pcfg = config_from_args(args, "pretrain", seed=4)
    assert (pcfg.lr, pcfg.mask_false_negatives, pcfg.seed) == (0.002, True, 4)
    assert pcfg.replace(lr=1e-3, mask_false_negatives=False, seed=0) == PretrainConfig()
    assert config_from_args(args, "bank") == BankConfig(
        kind="torch", prefix_lengths=((1, 2), (7, None))
    )
    assert config_from_args(args, "ram") == RAMConfig(alpha=0.3)
    assert config_from_args(args, "raft") == RAFTConfig(precision="bfloat16")
    args = parse_args(
        "gru4rec", ["--bank.prefix-lengths", "none", "--no-pretrain.mask-false-negatives"]
    )
    assert config_from_args(args, "bank").prefix_lengths is None
    assert config_from_args(args, "pretrain").mask_false_negatives is False


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--pretrain.lr", "-1"], "PretrainConfig.lr must be > 0, got -1.0"),
        (["--pretrain.batching", "sorted"], "PretrainConfig.batching must be one of"),
        (["--ram.alpha", "2"], "RAMConfig.alpha must be in [0, 1]"),
        (["--raft.valid-metric", "HR@7"], "RAFTConfig.valid_metric must be one of"),
        (["--ram.k", "two"], "invalid int value: 'two'"),
        (["--bank.prefix-lengths", "3"], "is not a range like"),
    ],
)
def test_bad_values_fail_with_the_configs_message(argv, message, capsys):
    with pytest.raises(SystemExit):
        parse_args("sasrec", argv)
    assert message in capsys.readouterr().err


def test_demo_sets_defaults_and_options_still_win():
    args = parse_args("sasrec", ["--demo"])
    for dest, value in DEMO.items():
        assert vars(args)[dest] == value, dest
    assert vars(args)["pretrain.batching"] == "windows"  # not SASRec's own "random"
    args = parse_args("sasrec", ["--demo", "--pretrain.epochs", "7", "--out", "x"])
    assert (vars(args)["pretrain.epochs"], args.out, args.protocols) == (7, "x", ["full"])
    normal = parse_args("sasrec", [])
    assert vars(normal)["pretrain.epochs"] == PretrainConfig().epochs and normal.out == "runs"


@pytest.mark.parametrize(
    ("cores", "load", "omp", "expected"),
    [
        (2, 0.1, None, 2),
        (2, 0.6, None, 1),  # one core busy: do not take it
        (2, 1.4, None, 1),
        (2, 5.0, None, 1),  # never below one
        (16, 3.2, None, 13),
        (16, 0.0, "4", 4),  # $OMP_NUM_THREADS caps it
        (2, 0.0, "8", 2),
    ],
)
def test_threads_follow_the_free_cores(monkeypatch, cores, load, omp, expected):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (load, 0.0, 0.0))
    if omp is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", omp)
    threads, line = choose_threads()
    assert threads == expected
    assert f"torch threads: {expected} ({cores} cores available, 1-minute load {load:.2f}" in line
    assert "--threads" in line and "\n" not in line
    assert choose_threads(3) == (3, "torch threads: 3 (--threads)")


def test_threads_option_must_be_positive(capsys):
    assert parse_args("sasrec", ["--threads", "2"]).threads == 2
    with pytest.raises(SystemExit):
        parse_args("sasrec", ["--threads", "0"])
    assert "not an int >= 1" in capsys.readouterr().err


def test_unknown_backbone_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown backbone 'nextitnet'; known: bert4rec, gru4rec"):
        cli_module.resolve("nextitnet")
    assert set(BACKBONES) == {"sasrec", "gru4rec", "bert4rec"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    return names | {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}


def test_examples_are_scripts_importing_only_the_library():
    assert not (ROOT / "examples" / "__init__.py").exists()
    allowed = ("raserec_adapter", "torch", "__future__", "argparse", "typing")
    for script in sorted((ROOT / "examples").glob("*.py")):
        for module in _imports(script):
            assert module.split(".")[0] in allowed, (script.name, module)
    for folder in ("raserec_adapter", "tests", "docs"):
        for path in (ROOT / folder).rglob("*.py"):
            assert not any(m.split(".")[0] == "examples" for m in _imports(path)), path


def test_sasrec_script_help_runs_from_another_directory(tmp_path):
    """``python examples/sasrec.py --help`` as a user runs it: a script, any working directory."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "sasrec.py"), "--help"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.startswith("usage: sasrec.py")
    assert "SASRec + RaSeRec" in done.stdout and "--pretrain.batching STR" in done.stdout


def test_a_run_reports_the_rams_lift_with_an_interval_from_its_saved_ranks(tmp_path, capsys):
    from conftest import finished_run, synthetic_sequences

    from raserec_adapter.evaluation.lift import lift_record

    seqs = synthetic_sequences(60, 20, seed=6)
    finished_run(tmp_path, "sasrec", seqs, "--raft.epochs", "1", "--seeds", "0", "1")
    assert "lift with the RAM, 95% interval (paired bootstrap over 60 test users)" in (
        capsys.readouterr().out
    )
    for protocol, suffix in (("full", ""), ("seen_removed", "-seen_removed")):
        rec = json.loads((tmp_path / f"toy-sasrec-raserec{suffix}-seeds0-1.json").read_text())
        plain = json.loads(
            (tmp_path / f"toy-sasrec-pretrained-plain{suffix}-seeds0-1.json").read_text()
        )
        assert "lift" not in plain
        saved = [
            np.load(tmp_path / f"toy-sasrec-raserec-seed{s}" / "test-ranks.npz") for s in (0, 1)
        ]
        base = np.stack([r[f"{protocol}.plain"] for r in saved])
        new = np.stack([r[f"{protocol}.raserec"] for r in saved])
        assert rec["lift"] == lift_record(base, new)  # the file's lift: its saved ranks'
        for name, row in rec["lift"]["metrics"].items():  # the means the file reports
            assert row["base"] == pytest.approx(plain["mean"][name], abs=1e-9)
            assert row["new"] == pytest.approx(rec["mean"][name], abs=1e-9)
        one = rec["per_seed_details"][0]["lift"][protocol]
        assert one == lift_record(base[:1], new[:1])
