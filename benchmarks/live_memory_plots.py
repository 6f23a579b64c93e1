"""The figures of a live-memory results file (``benchmarks/live_memory.py --plot FILE``).

Plain SVG, written without a plotting library: the streaming protocol of the file's dataset and,
per step, every arm's metric with the live - stale interval beside it. Each dataset gets its own
pair, ``live-memory-protocol-<dataset>.svg`` and ``live-memory-steps-<dataset>.svg``.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np

COLORS = {"frozen": "#888888", "stale": "#3f72af", "live": "#e07a2f", "forget": "#8e5ea2",
          "retrained": "#2a9d5c"}  # fmt: skip


def _t(x: float, y: float, text: Any, more: str = "") -> str:
    return f'<text x="{x:.1f}" y="{y:.1f}" {more}>{html.escape(str(text))}</text>'


def _r(x: float, y: float, w: float, h: float, more: str) -> str:
    return f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" {more}/>'


def _svg(width: int, height: int, label: str, body: list[str]) -> str:
    return "\n".join([
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" role="img" aria-label="{label}" font-family="sans-serif" '
        'font-size="12"><rect width="100%" height="100%" fill="white"/>', *body, "</svg>\n",
    ])  # fmt: skip


def protocol_svg(rec: dict) -> str:
    """The protocol: the training part, the steps, and what each arm holds at step j."""
    n, x0, w, top = len(rec["steps"]), 210, 44, 46
    j = max(1, n // 2)
    body = [_t(10, 20, f"{rec['stream']} stream on {rec['dataset']}: train up to the cut, then "
               f"{n} steps; at step j the arms hold", 'font-weight="bold"')]  # fmt: skip
    body += [_r(x0 - 120, top, 116, 24, 'fill="#cfd8e3"'), _t(x0 - 100, top + 16, "training")]
    for i in range(n):
        body.append(_r(x0 + i * w, top, w - 4, 24, 'fill="#f4d7bf"'))
        body.append(_t(x0 + i * w + w / 2 - 2, top + 16, i, 'text-anchor="middle"'))
    body.append(f'<line x1="{x0 - 2}" y1="{top - 8}" x2="{x0 - 2}" y2="{top + 180}" '
                'stroke="black" stroke-dasharray="4 3"/>')  # fmt: skip
    body.append(_t(x0 - 2, top - 12, "cut", 'text-anchor="middle"'))
    rows = [("frozen", "the cut's encoder alone, no memories", 0),
            ("stale", "the cut's RAM, bank of the cut's pairs", 0),
            ("live", "the same RAM, bank + add_memories of every step < j", j),
            ("forget", "live, 10% of the users removed at the middle step", j),
            ("retrained", "encoder + RAM trained again on all before j", j)]  # fmt: skip
    for i, (arm, text, upto) in enumerate(rows):
        y, fill = top + 40 + i * 28, f'fill="{COLORS[arm]}" opacity="0.6"'
        body += [_t(10, y + 13, arm, f'fill="{COLORS[arm]}" font-weight="bold"')]
        body += [_r(x0 - 120, y, 116, 16, fill)] + (
            [_r(x0, y, upto * w - 4, 16, fill)] * bool(upto)
        )
        body += [_r(x0 + j * w, y, w - 4, 16, 'fill="none" stroke="black"')]
        body.append(_t(x0 + n * w + 8, y + 13, text))
    body.append(
        _t(x0 + j * w + w / 2, top + 200, f"step j = {j}: its targets", 'text-anchor="middle"')
    )
    return _svg(x0 + n * w + 390, top + 215, "the streaming protocol", body)


def _panel(series: dict[str, list], title: str, x0: int, band: list | None = None) -> list[str]:
    """A line chart at ``x0`` (width 400): one line per series, ``None`` points skipped;
    ``band``: ``(low, high)`` per step drawn as bars (an interval)."""
    W, H, top, n = 400, 255, 30, max(len(v) for v in series.values())
    vals = [v for vs in series.values() for v in vs if v is not None]
    vals += [v for b in band or [] for v in b]
    lo, hi = min(vals + [0.0] * bool(band)), max(vals)
    pad = (hi - lo) * 0.08 or 0.01
    lo, hi = lo - pad, hi + pad
    sx = lambda j: x0 + 50 + (j + 0.5) * (W - 60) / n  # noqa: E731
    sy = lambda v: top + (H - top - 55) * (hi - v) / (hi - lo)  # noqa: E731
    out = [_t(x0 + 50, 18, title, 'font-weight="bold"')]
    out.append(f'<path d="M{x0 + 50},{top} V{H - 55} H{x0 + W - 10}" fill="none" stroke="black"/>')
    out += [_t(x0 + 44, sy(t) + 4, f"{t:+.4f}" if band else f"{t:.3f}", 'text-anchor="end"')
            for t in np.linspace(lo, hi, 5)]  # fmt: skip
    out += [_t(sx(j), H - 40, j, 'text-anchor="middle"') for j in range(n)]
    out.append(_t(x0 + W / 2, H - 24, "step", 'text-anchor="middle"'))
    if band:
        out.append(f'<line x1="{x0 + 50}" y1="{sy(0):.1f}" x2="{x0 + W - 10}" y2="{sy(0):.1f}" '
                   'stroke="#999" stroke-dasharray="3 3"/>')  # fmt: skip
        out += [f'<line x1="{sx(j):.1f}" y1="{sy(a):.1f}" x2="{sx(j):.1f}" y2="{sy(b):.1f}" '
                f'stroke="{COLORS["live"]}" stroke-width="6" opacity="0.35"/>'
                for j, (a, b) in enumerate(band)]  # fmt: skip
    for i, (arm, vs) in enumerate(series.items()):
        pts = [(sx(j), sy(v)) for j, v in enumerate(vs) if v is not None]
        color = COLORS.get(arm, COLORS["live"])
        out.append(f'<polyline points="{" ".join(f"{x:.1f},{y:.1f}" for x, y in pts)}" '
                   f'fill="none" stroke="{color}" stroke-width="2"/>')  # fmt: skip
        out += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{color}"/>' for x, y in pts]
        if not band:
            out.append(_t(x0 + 50 + 72 * i, H - 4, arm, f'fill="{color}" font-weight="bold"'))
    return out


def steps_svg(rec: dict, metric: str = "NDCG@10") -> str:
    """Per step: the metric of every arm (protocol ``full``) and the live - stale interval."""
    steps, p = rec["steps"], "full"
    series = {a: [r["metrics"].get(f"{p}.{a}", {}).get(metric) for r in steps] for a in COLORS}
    series = {a: v for a, v in series.items() if any(x is not None for x in v)}
    lift = [r["lift_live_minus_stale"][p][metric] for r in steps]
    body = _panel(series, f"{metric} per arm, protocol {p}, seeds {rec['seeds']}", 0)
    body += _panel({"live - stale": [x["diff"] for x in lift]}, "live - stale, 95% interval",
                   420, band=[(x["low"], x["high"]) for x in lift])  # fmt: skip
    return _svg(830, 255, f"{metric} per step and arm; live minus stale", body)


def dataset_name(rec: dict) -> str:
    """``"ml-100k"`` for ``../shared/data/ml-100k.inter``, ``"beauty"`` for ``beauty``."""
    return Path(str(rec["dataset"])).name.split(".")[0]


def plot(rec: dict, folder: Path) -> list[Path]:
    """Writes ``live-memory-protocol-<dataset>.svg`` and ``live-memory-steps-<dataset>.svg``
    into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    name = dataset_name(rec)
    out = [folder / f"live-memory-{kind}-{name}.svg" for kind in ("protocol", "steps")]
    out[0].write_text(protocol_svg(rec))
    out[1].write_text(steps_svg(rec))
    return out
