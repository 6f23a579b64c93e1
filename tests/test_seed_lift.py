"""tools/seed_lift.py: the lift paired over seeds, against closed forms and a hand computation."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import seed_lift

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("p", [0.9, 0.95, 0.975, 0.995])
def test_t_quantiles_match_the_closed_forms(p: float) -> None:
    # df = 1 is the Cauchy law: tan(pi (p - 1/2)); df = 2: (2p - 1) / sqrt(2 p (1 - p))
    assert seed_lift.t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-4)
    two = (2 * p - 1) / math.sqrt(2 * p * (1 - p))
    assert seed_lift.t_quantile(p, 2) == pytest.approx(two, rel=1e-6)


def _record(variant: str, values: list[float], seeds: list[int]) -> dict:
    per_seed = [{m: v for m in seed_lift.METRICS} for v in values]
    return {
        "dataset": "beauty",
        "backbone": "sasrec",
        "variant": variant,
        "protocol": "full",
        "split": "test",
        "seeds": seeds,
        "per_seed": per_seed,
    }


def test_interval_by_hand_and_refusals() -> None:
    base = _record("pretrained-plain", [0.10, 0.20, 0.30], [0, 1, 2])
    new = _record("raserec", [0.12, 0.23, 0.325], [0, 1, 2])
    rec = seed_lift.seed_lift(base, new)
    r = rec["metrics"]["HR@10"]
    # differences 0.02, 0.03, 0.025: mean 0.025, sd 0.005; t(0.975, 2) = 4.3027 (closed form)
    half = (0.95 / math.sqrt(2 * 0.975 * 0.025)) * 0.005 / math.sqrt(3)
    assert r["diff"] == pytest.approx(0.025)
    assert (r["low"], r["high"]) == pytest.approx((0.025 - half, 0.025 + half), rel=1e-6)
    assert r["excludes_zero"] and "over 3 seeds" in rec["method"]
    assert "not over users" in rec["method"]
    flat = seed_lift.seed_lift(base, _record("raserec", [0.12, 0.19, 0.30], [0, 1, 2]))
    assert not flat["metrics"]["NDCG@5"]["excludes_zero"]
    with pytest.raises(SystemExit, match="differ in seeds"):
        seed_lift.seed_lift(base, _record("raserec", [0.1, 0.2, 0.3], [0, 1, 3]))
    with pytest.raises(SystemExit, match="at least two seeds"):
        seed_lift.seed_lift(_record("p", [0.1], [0]), _record("r", [0.1], [0]))


def test_the_script_writes_the_lift_and_keeps_a_lift_over_users(tmp_path: Path) -> None:
    base, new = tmp_path / "b.json", tmp_path / "n.json"
    base.write_text(json.dumps(_record("pretrained-plain", [0.1, 0.2], [0, 1])))
    new.write_text(json.dumps(_record("raserec", [0.2, 0.25], [0, 1])))
    cmd = [sys.executable, str(ROOT / "tools" / "seed_lift.py"), str(base), str(new)]
    subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
    lift = json.loads(new.read_text())["lift"]
    assert lift["metrics"]["HR@5"]["diff"] == pytest.approx(0.075)
    assert "command" in lift["provenance"]
    users = {"method": "paired bootstrap over test users, percentile interval", "metrics": {}}
    new.write_text(json.dumps({**_record("raserec", [0.2, 0.25], [0, 1]), "lift": users}))
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
    assert "left as it is" in out.stdout
    assert json.loads(new.read_text())["lift"] == users
