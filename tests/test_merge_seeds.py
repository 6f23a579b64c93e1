"""tools/merge_seeds.py: merging single-seed results files."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from raserec_adapter.experiments.reporting import write_results

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import merge_seeds


def _run(
    folder: Path,
    seed: int,
    hr: float,
    lr: float = 1e-3,
    settings: dict | None = None,
    epochs: int = 100,
) -> Path:
    path = folder / f"s{seed}" / "beauty-sasrec-raserec.json"
    backbone = {"backbone_settings": settings} if settings else {}
    write_results(
        path,
        dataset="beauty",
        backbone="sasrec",
        variant="raserec",
        protocol="full",
        seeds=[seed],
        per_seed=[{"HR@10": hr, "NDCG@10": hr / 2}],
        wall_seconds=100.0,
        extra={
            "per_seed_details": [
                {"seed": seed, "pretrain": {"config": {"lr": lr, "seed": seed, "epochs": epochs}}}
            ],
            **backbone,
        },
        commit="abc",
    )
    return path


def test_merge_means_and_keeps_provenance(tmp_path: Path) -> None:
    files = [_run(tmp_path, s, hr) for s, hr in [(0, 0.08), (1, 0.09), (2, 0.07)]]
    out = tmp_path / "merged.json"
    merge_seeds.main([*map(str, files), "--out", str(out)])
    rec = json.loads(out.read_text())
    assert rec["seeds"] == [0, 1, 2]
    assert rec["mean"]["HR@10"] == pytest.approx(0.08)
    assert rec["mean"]["NDCG@10"] == pytest.approx(0.04)
    assert rec["std"]["HR@10"] == pytest.approx(0.01)
    assert [r["seeds"] for r in rec["runs"]] == [[0], [1], [2]]
    assert rec["git_commit"] == "abc" and rec["wall_seconds"] == 300.0


def test_a_resumed_runs_earlier_invocations_count_in_the_wall_time(tmp_path: Path) -> None:
    files = [_run(tmp_path, s, hr) for s, hr in [(0, 0.08), (1, 0.09)]]
    record = json.loads(files[1].read_text())  # resumed once: stage 1 in two calls
    record["per_seed_details"][0]["pretrain"]["invocations"] = [{"seconds": 40.0}, {"seconds": 5.0}]
    files[1].write_text(json.dumps(record))
    out = tmp_path / "merged.json"
    merge_seeds.main([*map(str, files), "--out", str(out)])
    rec = json.loads(out.read_text())
    assert [r.get("earlier_invocations_seconds") for r in rec["runs"]] == [None, 40.0]
    assert rec["wall_seconds"] == 240.0  # 100 + 100 + the 40 s before the resume
    again = tmp_path / "again.json"  # a merged file merged again keeps the count
    merge_seeds.main([str(out), str(_run(tmp_path / "b", 2, 0.07)), "--out", str(again)])
    assert json.loads(again.read_text())["wall_seconds"] == 340.0


def test_merge_keeps_a_runs_written_history(tmp_path: Path) -> None:
    files = [_run(tmp_path, s, hr) for s, hr in [(0, 0.08), (1, 0.09)]]
    record = json.loads(files[0].read_text())
    record["run_history"] = "stage 1 ran in two calls"
    files[0].write_text(json.dumps(record))
    out = tmp_path / "merged.json"
    merge_seeds.main([*map(str, files), "--out", str(out)])
    runs = json.loads(out.read_text())["runs"]
    assert runs[0]["run_history"] == "stage 1 ran in two calls"
    assert "run_history" not in runs[1]


def test_a_merged_file_takes_more_seeds_and_passes_on_its_runs(tmp_path: Path) -> None:
    first = tmp_path / "first.json"
    seeds01 = [_run(tmp_path, 0, 0.08), _run(tmp_path, 1, 0.09)]
    for seed, f in enumerate(seeds01):  # each seed's own command line
        f.write_text(json.dumps(dict(json.loads(f.read_text()), command=f"train --seed {seed}")))
    merge_seeds.main([*map(str, seeds01), "--out", str(first)])
    later = json.loads(_run(tmp_path, 2, 0.04).read_text())
    later["git_commit"], later["command"] = "def", "train --seed 2"
    later_path = tmp_path / "later.json"
    later_path.write_text(json.dumps(later))
    out = tmp_path / "merged.json"
    merge_seeds.main([str(first), str(later_path), "--out", str(out)])
    rec = json.loads(out.read_text())
    assert rec["seeds"] == [0, 1, 2]
    assert rec["mean"]["HR@10"] == pytest.approx(0.07)
    # the seeds' own runs, not one entry for the earlier merge
    assert [r["seeds"] for r in rec["runs"]] == [[0], [1], [2]]
    assert [r["git_commit"] for r in rec["runs"]] == ["abc", "abc", "def"]
    assert [r["command"] for r in rec["runs"]] == [f"train --seed {s}" for s in (0, 1, 2)]
    assert rec["git_commit"] == "abc, def"
    assert [d["seed"] for d in rec["per_seed_details"]] == [0, 1, 2]
    with pytest.raises(ValueError, match="appears twice"):
        merge_seeds.main([str(out), str(_run(tmp_path / "again", 1, 0.09)), "--out", str(out)])


def test_merge_refuses_other_experiments(tmp_path: Path) -> None:
    a = json.loads(_run(tmp_path, 0, 0.08).read_text())
    b = json.loads(_run(tmp_path, 1, 0.08, lr=1e-2).read_text())
    with pytest.raises(ValueError, match="other settings"):
        merge_seeds.merge([a, b])
    with pytest.raises(ValueError, match="appears twice"):
        merge_seeds.merge([a, a])
    c = dict(a, seeds=[5], variant="pretrained-plain")
    with pytest.raises(ValueError, match="variant"):
        merge_seeds.merge([a, c])


def test_merge_keeps_backbone_settings_and_refuses_mixed_ones(tmp_path: Path) -> None:
    obj = {"objective": "next-item"}
    files = [_run(tmp_path, s, 0.08, settings=obj) for s in (0, 1)]
    out = tmp_path / "merged.json"
    merge_seeds.main([*map(str, files), "--out", str(out)])
    assert json.loads(out.read_text())["backbone_settings"] == obj
    cloze = json.loads(_run(tmp_path / "c", 2, 0.08, settings={"objective": "cloze"}).read_text())
    with pytest.raises(ValueError, match="backbone_settings"):
        merge_seeds.merge([json.loads(files[0].read_text()), cloze])


def test_settings_added_later_count_as_their_defaults(tmp_path: Path) -> None:
    """A file written before ``PretrainConfig.batching`` existed ran with today's default."""
    old = json.loads(_run(tmp_path / "o", 0, 0.08).read_text())  # its config has no "batching"
    new = json.loads(_run(tmp_path / "n", 1, 0.08).read_text())
    windows = json.loads(json.dumps(new))
    windows["per_seed_details"][0]["pretrain"]["config"]["batching"] = "windows"
    assert merge_seeds.merge([old, windows])["seeds"] == [0, 1]
    rand = json.loads(json.dumps(new))
    rand["per_seed_details"][0]["pretrain"]["config"]["batching"] = "random"
    with pytest.raises(ValueError, match="other settings"):
        merge_seeds.merge([old, rand])


def test_ignore_epochs_lets_only_the_stage1_cap_differ(tmp_path: Path) -> None:
    a = _run(tmp_path, 0, 0.08, epochs=43)
    b = _run(tmp_path, 1, 0.06, epochs=32)
    out = tmp_path / "merged.json"
    with pytest.raises(ValueError, match="--ignore-epochs"):
        merge_seeds.main([str(a), str(b), "--out", str(out)])
    assert not out.exists()
    merge_seeds.main([str(a), str(b), "--out", str(out), "--ignore-epochs"])
    rec = json.loads(out.read_text())
    assert rec["mean"]["HR@10"] == pytest.approx(0.07)
    assert [d["pretrain"]["config"]["epochs"] for d in rec["per_seed_details"]] == [43, 32]
    c = json.loads(_run(tmp_path, 2, 0.08, lr=1e-2, epochs=32).read_text())
    with pytest.raises(ValueError, match="other settings"):  # other settings still refused
        merge_seeds.merge([json.loads(a.read_text()), c], ignore_epochs=True)


def test_merge_refuses_files_whose_settings_it_cannot_check(tmp_path: Path) -> None:
    a = json.loads(_run(tmp_path, 0, 0.08).read_text())
    b = json.loads(_run(tmp_path, 1, 0.08, lr=1e-2).read_text())
    b.pop("per_seed_details")  # its lr of 1e-2 would go unnoticed
    with pytest.raises(ValueError, match=r"file 2: 1 seeds but 0 per_seed_details"):
        merge_seeds.merge([a, b])


def test_merge_compares_the_recorded_encoder_but_not_its_checkpoint(tmp_path: Path) -> None:
    def with_encoder(seed: int, hidden: int, checkpoint: str) -> dict:
        rec = json.loads(_run(tmp_path / str(seed), seed, 0.08).read_text())
        rec["per_seed_details"][0]["encoder"] = {
            "class": "SASRec",
            "hidden_size": hidden,
            "parameters": 1000 * hidden,
            "checkpoint": {"path": checkpoint, "sha256": checkpoint * 8},
        }
        return rec

    same = [with_encoder(0, 64, "a"), with_encoder(1, 64, "b")]  # other encoders, one model
    assert merge_seeds.merge(same)["seeds"] == [0, 1]
    with pytest.raises(ValueError, match=r"seed 2 ran another encoder than seed 0"):
        merge_seeds.merge([same[0], with_encoder(2, 32, "a")])
    older = json.loads(_run(tmp_path / "old", 3, 0.08).read_text())  # written before the record
    assert merge_seeds.merge([same[0], older])["seeds"] == [0, 3]
