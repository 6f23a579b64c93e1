"""The RAM's lift over the frozen encoder, paired over seeds, for results files without ranks.

``tools/paired_lift.py`` computes the lift with a paired bootstrap over test users, from each
run's test ranks; sets whose runs were made before the ranks were kept have none. This script
gives them the interval their files can support: for each metric, the per-seed differences
(with the RAM minus frozen, the same seed's encoder on both sides) and a two-sided Student t
interval over them (``n - 1`` degrees of freedom). It needs at least two seeds, the same seeds
in both files, and the same dataset, backbone, protocol and split; it writes ``lift`` into the
``raserec`` file (its method says it is over seeds, not users) with this command's provenance.
A file that already has a lift over users is left as it is.

    python tools/seed_lift.py benchmarks/results/beauty-sasrec-pretrained-plain.json \\
        benchmarks/results/beauty-sasrec-raserec.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _common import provenance, write_json

METRICS = ("HR@5", "NDCG@5", "HR@10", "NDCG@10", "HR@20", "NDCG@20")
SAME = ("dataset", "backbone", "protocol", "split", "seeds")


def t_cdf(t: float, df: int) -> float:
    """Student t CDF: ``1/2 + integral of the density from 0 to t`` (Simpson, 4,000 steps)."""
    if t < 0:
        return 1.0 - t_cdf(-t, df)
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    x = np.linspace(0.0, t, 4001)
    pdf = np.exp(log_c - (df + 1) / 2 * np.log1p(x * x / df))
    h = t / 4000
    return 0.5 + h / 3 * float(pdf[0] + pdf[-1] + 4 * pdf[1:-1:2].sum() + 2 * pdf[2:-1:2].sum())


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile (``p > 1/2``) of Student's t, by bisection on :func:`t_cdf`.

    Examples:
        >>> round(t_quantile(0.975, 2), 3)  # closed form (2p - 1) / sqrt(2p(1 - p)): 4.303
        4.303
    """
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
    return (lo + hi) / 2


def seed_lift(base: dict[str, Any], new: dict[str, Any], level: float = 0.95) -> dict[str, Any]:
    """The ``lift`` record of ``new`` over ``base`` from their ``per_seed`` metrics."""
    for key in SAME:
        if base.get(key) != new.get(key):
            raise SystemExit(f"the files differ in {key}: {base.get(key)!r} vs {new.get(key)!r}")
    n = len(base["seeds"])
    if n < 2 or len(base["per_seed"]) != n or len(new["per_seed"]) != n:
        raise SystemExit(f"need per-seed metrics of at least two seeds in both files, got {n}")
    q = t_quantile(0.5 + level / 2, n - 1)
    metrics = {}
    for m in METRICS:
        a = np.array([s[m] for s in base["per_seed"]])
        b = np.array([s[m] for s in new["per_seed"]])
        d = b - a
        half = q * float(d.std(ddof=1)) / math.sqrt(n)
        low, high = float(d.mean()) - half, float(d.mean()) + half
        metrics[m] = {
            "base": float(a.mean()),
            "new": float(b.mean()),
            "diff": float(d.mean()),
            "low": low,
            "high": high,
            "excludes_zero": bool(low > 0.0 or high < 0.0),
        }
    return {
        "method": (
            f"paired t interval over {n} seeds (per-seed means, {n - 1} degrees of freedom), "
            "not over users: the runs' test ranks were not kept"
        ),
        "level": level,
        "seeds_averaged": n,
        "metrics": metrics,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("base", type=Path, help="the pretrained-plain (frozen encoder) results file")
    p.add_argument("new", type=Path, help="the raserec results file; gets the lift")
    p.add_argument("--level", type=float, default=0.95)
    args = p.parse_args()
    base, new = (json.loads(f.read_text()) for f in (args.base, args.new))
    if "over test users" in new.get("lift", {}).get("method", ""):
        print(f"{args.new} has a lift over users already; left as it is")
        return
    lift = seed_lift(base, new, args.level)
    lift["provenance"] = provenance(0.0)
    write_json(args.new, {**new, "lift": lift})
    for m, r in lift["metrics"].items():
        print(f"{m}: {r['diff']:+.4f} [{r['low']:+.4f}, {r['high']:+.4f}]")


if __name__ == "__main__":
    main()
