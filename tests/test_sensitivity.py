"""benchmarks/sensitivity.py: a RAM sweep over one frozen encoder, and its summary."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import synthetic_sequences

from raserec_adapter.experiments import BACKBONES, parse_args

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import sensitivity

TINY = "--hidden-size 8 --max-len 10"


@pytest.fixture(scope="module")
def encoder_and_data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sens")
    seqs = synthetic_sequences(50, 20, seed=2)
    lines = [" ".join(map(str, [u + 1, *seqs[u].tolist()])) for u in range(seqs.num_users)]
    (tmp / "tiny.txt").write_text("\n".join(lines) + "\n")
    torch.manual_seed(0)
    model = BACKBONES["sasrec"].build(20, parse_args("sasrec", TINY.split()))
    torch.save(model.state_dict(), tmp / "encoder.pt")
    return tmp


def _sweep(tmp: Path, out: Path, *extra: str) -> dict:
    args = ["--backbone", "sasrec", f"--backbone-args={TINY}", "--dataset", str(tmp / "tiny.txt")]
    args += ["--encoder", str(tmp / "encoder.pt"), "--index", "Flat", "--seed", "1"]
    args += ["--alphas", "0.2", "--betas", "", "--ks", "3", "--raft-epochs", "2"]
    args += ["--patience", "1", "--threads", "1", "--out", str(out), *extra]
    return sensitivity.main(args)


def test_sweep_runs_every_setting_and_a_resumed_setting_repeats_exactly(encoder_and_data):
    tmp = encoder_and_data
    record = _sweep(tmp, tmp / "a.json")
    on_disk = json.loads((tmp / "a.json").read_text())
    assert on_disk["settings"] == record["settings"]
    got = [r["setting"] for r in on_disk["settings"]]
    assert got == [
        {"alpha": 0.5, "beta": 1.0, "k": 20},
        {"alpha": 0.2, "beta": 1.0, "k": 20},
        {"alpha": 0.5, "beta": 1.0, "k": 3},
    ]
    for row in on_disk["settings"]:
        assert 1 <= row["best_epoch"] <= row["epochs_run"] <= 2
        assert {"HR@5", "NDCG@10"} <= set(row["valid"]) and {"HR@5", "NDCG@10"} <= set(row["test"])
    assert set(on_disk["plain"]) == {"valid", "test"}
    assert {"command", "git_commit", "machine", "wall_seconds"} <= set(on_disk)
    # drop the middle setting and resume: only it is run again, with the same result
    cut = {**on_disk, "settings": [on_disk["settings"][0], on_disk["settings"][2]]}
    (tmp / "b.json").write_text(json.dumps(cut))
    resumed = _sweep(tmp, tmp / "b.json", "--resume")

    def untimed(rows: list[dict]) -> list[dict]:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]

    assert untimed(resumed["settings"]) == untimed(on_disk["settings"])
    assert resumed["earlier_invocations"][-1]["command"] == on_disk["command"]
    # rows made with other RAFT settings are not resumed into
    with pytest.raises(SystemExit, match=r"other settings: \{'patience': \(1, 3\)\}"):
        _sweep(tmp, tmp / "b.json", "--resume", "--patience", "3")
    old = {k: v for k, v in cut.items() if k != "settings_of_rows"}  # an older file
    (tmp / "c.json").write_text(json.dumps(old))
    with pytest.raises(SystemExit, match="does not record the settings its rows were made with"):
        _sweep(tmp, tmp / "c.json", "--resume")
    with pytest.raises(SystemExit, match="another encoder or seed"):
        sensitivity.main(
            ["--encoder", "x.pt", "--out", str(tmp / "b.json"), "--resume", "--seed", "1"]
        )


def _fake(seed: int, valid: list[float], test: list[float], backbone: str = "sasrec") -> dict:
    grid = sensitivity.settings([0.2], [], [], sensitivity.BASE)
    metrics = ("HR@5", "NDCG@5", "HR@10", "NDCG@10")
    return {
        "what": "w",
        "dataset": "beauty",
        "backbone": backbone,
        "backbone_args": "",
        "seed": seed,
        "encoder": f"e{seed}.pt",
        "plain": {w: dict.fromkeys(metrics, 0.01) for w in ("valid", "test")},
        "settings": [
            {
                "setting": s,
                "best_epoch": 1,
                "valid": dict.fromkeys(metrics, v),
                "test": dict.fromkeys(metrics, t),
            }
            for s, v, t in zip(grid, valid, test, strict=True)
        ],
        **{k: "x" for k in ("command", "git_commit", "machine", "wall_seconds")},
    }


def test_summary_means_over_seeds_and_selects_by_validation_only(tmp_path):
    # the base setting wins on validation, alpha 0.2 on the test: the summary picks the base
    files = []
    for seed, valid, test in ((0, [0.30, 0.20], [0.10, 0.40]), (1, [0.10, 0.15], [0.20, 0.50])):
        files.append(tmp_path / f"s{seed}.json")
        files[-1].write_text(json.dumps(_fake(seed, valid, test)))
    out = tmp_path / "sum.json"
    record = sensitivity.main(["--summarise", *map(str, files), "--out", str(out)])
    assert json.loads(out.read_text()) == record
    assert record["selected_by_valid"]["setting"] == sensitivity.BASE
    base, alt = record["settings"]
    assert base["valid"]["HR@10"] == pytest.approx(0.20) and alt["valid"]["HR@10"] == 0.175
    assert base["test"]["HR@5"] == pytest.approx(0.15) and alt["test"]["HR@5"] == 0.45
    assert record["seeds"] == [0, 1]


def test_summary_keeps_a_provenance_note_and_a_sweep_refuses_one(tmp_path, capsys):
    files = []
    for seed in (0, 1):
        files.append(str(tmp_path / f"s{seed}.json"))
        Path(files[-1]).write_text(json.dumps(_fake(seed, [0.1, 0.2], [0.1, 0.2])))
    out = tmp_path / "sum.json"
    sensitivity.main(["--summarise", *files, "--out", str(out), "--note", "encoder of run 7"])
    assert json.loads(out.read_text())["note"] == "encoder of run 7"
    sensitivity.main(["--summarise", *files, "--out", str(out)])
    assert "note" not in json.loads(out.read_text())
    with pytest.raises(SystemExit):  # a note belongs to the summary, not to a sweep's part
        sensitivity.main(["--encoder", "e.pt", "--out", str(out), "--note", "x"])
    assert "--note goes with --summarise" in capsys.readouterr().err


@pytest.mark.parametrize(
    "second, message",
    [
        ({**_fake(0, [0.1, 0.2], [0.1, 0.2]), "encoder": "other.pt"}, "a seed appears twice"),
        (_fake(1, [0.1, 0.2], [0.1, 0.2], backbone="gru4rec"), "different datasets or backbones"),
    ],
)
def test_summary_refuses_files_that_do_not_belong_together(tmp_path, second, message):
    (tmp_path / "a.json").write_text(json.dumps(_fake(0, [0.1, 0.2], [0.1, 0.2])))
    (tmp_path / "b.json").write_text(json.dumps(second))
    files = [str(tmp_path / "a.json"), str(tmp_path / "b.json")]
    with pytest.raises(SystemExit, match=message):
        sensitivity.main(["--summarise", *files, "--out", str(tmp_path / "o.json")])


def test_summary_refuses_different_grids(tmp_path):
    a, b = _fake(0, [0.1, 0.2], [0.1, 0.2]), _fake(1, [0.1, 0.2], [0.1, 0.2])
    b["settings"][1]["setting"] = {"alpha": 0.9, "beta": 1.0, "k": 20}
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    files = [str(tmp_path / "a.json"), str(tmp_path / "b.json")]
    with pytest.raises(SystemExit, match="different settings"):
        sensitivity.main(["--summarise", *files, "--out", str(tmp_path / "o.json")])


def test_summary_joins_parts_of_one_seed_as_if_swept_in_one_process(tmp_path):
    whole = {0: _fake(0, [0.3, 0.2], [0.1, 0.4]), 1: _fake(1, [0.1, 0.15], [0.2, 0.5])}
    for seed, rec in whole.items():
        (tmp_path / f"whole{seed}.json").write_text(json.dumps(rec))
    # seed 0 in two parts that both ran the base; the second part lists alpha 0.2 first
    base, alt = whole[0]["settings"]
    first = {**whole[0], "settings": [base]}
    second = {**whole[0], "settings": [alt, {**base, "test": {**base["test"], "HR@5": 0.13}}]}
    (tmp_path / "p1.json").write_text(json.dumps(first))
    (tmp_path / "p2.json").write_text(json.dumps(second))

    def run(names: list[str]) -> dict:
        files = [str(tmp_path / n) for n in names]
        return sensitivity.main(["--summarise", *files, "--out", str(tmp_path / "o.json")])

    joined = run(["p1.json", "p2.json", "whole1.json"])
    plain = run(["whole0.json", "whole1.json"])
    for key in ("settings", "plain", "selected_by_valid", "seeds"):
        assert joined[key] == plain[key]
    assert len(joined["runs"]) == 3
    (rep,) = joined["repeated_settings"]
    assert rep["setting"] == sensitivity.BASE and rep["max_test_diff"] == pytest.approx(0.03)
    assert "repeated_settings" not in plain
    # a part that misses a setting the other seed has is refused like a different grid
    with pytest.raises(SystemExit, match="different settings"):
        run(["p1.json", "whole1.json"])
    # parts of one encoder whose frozen metrics differ are not one sweep
    other = {
        **first,
        "plain": {w: dict.fromkeys(first["plain"]["test"], 0.5) for w in first["plain"]},
    }
    (tmp_path / "p3.json").write_text(json.dumps(other))
    with pytest.raises(SystemExit, match="different frozen metrics"):
        run(["p1.json", "p3.json"])
