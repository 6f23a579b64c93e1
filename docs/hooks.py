"""MkDocs hooks (``mkdocs.yml``): a page's marker ``<!-- gen:NAME -->`` becomes the generated
``GENERATORS[NAME](ROOT)``: ``results`` (``benchmarks/results/*.json``) or ``faiss-measurements``.
An unknown marker or unreadable file logs a warning, so ``mkdocs build --strict`` fails on it.
"""

from __future__ import annotations

import html
import json
import logging
import math
import re
import statistics
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger("mkdocs.hooks.raserec_docs")

ROOT = Path(__file__).resolve().parents[1]
MARKER_RE = re.compile(r"^<!-- gen:([a-z-]+) -->[ \t]*$", re.M)
# "# docs: no-run  (reason)" marks code blocks the tests only compile; readers see "# reason".
NO_RUN_RE = re.compile(r"^([ \t]*)# docs: no-run[ \t]*(?:\((.*)\))?[ \t]*\n", re.M)
METRICS = ("HR@5", "NDCG@5", "HR@10", "NDCG@10")
VARIANTS = {"plain": 0, "pretrained-plain": 1, "raserec": 2}
PROVENANCE = ("command", "git_commit", "machine", "wall_seconds", "finished_at")
NOTES = ("model_note", "note", "run_history", "wall_seconds_note")
LIFT = ("base", "new", "diff", "low", "high", "excludes_zero")  # evaluation.lift.paired_lift


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """MkDocs event: expands ``<!-- gen:NAME -->`` markers and ``# docs: no-run`` lines."""

    def expand(match: re.Match[str]) -> str:
        if (name := match.group(1)) in GENERATORS:
            return GENERATORS[name](ROOT)
        log.warning("%s: unknown marker 'gen:%s'", page.file.src_path, name)
        return match.group(0)

    markdown = NO_RUN_RE.sub(
        lambda m: f"{m.group(1)}# {m.group(2)}\n" if m.group(2) else "", markdown
    )
    return MARKER_RE.sub(expand, markdown)


def _cell(x: Any) -> str:
    return html.escape(str(x), quote=False).replace("|", "\\|")


def _value(v: Any, column: str = "") -> str:
    """A cell: 4 decimals below 1, else 4 digits; changes in %; dicts as ``k v, ...``."""
    if "change" in column and isinstance(v, (int, float)):
        return f"{v:+.1f}%"
    if isinstance(v, dict):
        return _cell(", ".join(f"{k} {x}" for k, x in v.items()))
    if isinstance(v, list) and all(isinstance(x, (int, float)) for x in v):
        return ", ".join(_value(x) for x in v)
    if isinstance(v, float) and math.isfinite(v):
        return f"{v:.4f}" if abs(v) < 1 else f"{v:.4g}"
    return "" if v is None else _cell(v)


def _get(d: Any, dotted: str) -> Any:
    for key in dotted.split("."):
        d = d.get(key) if isinstance(d, dict) else None
    return d


def _table(head: Iterable[str], rows: Iterable[Iterable[str]]) -> list[str]:
    head = list(head)
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return [*out, *("| " + " | ".join(r) + " |" for r in rows), ""]


def _slug(path: Path) -> str:  # the anchor of a results file's section
    return "run-" + re.sub(r"[^a-z0-9]+", "-", path.stem.lower()).strip("-")


def _machine(m: Any) -> str:
    if not isinstance(m, dict):
        return _cell(m)
    parts = [str(m.get("cpu", "?")) + (f" ({m['cpu_cores']} cores)" if m.get("cpu_cores") else "")]
    parts += [f"GPU {m['gpu']}"] if m.get("gpu") else []
    parts += [f"{m['torch_threads']} torch threads"] if m.get("torch_threads") else []
    return _cell(", ".join(parts + [f"{k} {m[k]}" for k in ("torch", "faiss", "python") if k in m]))


def load_results(results_dir: Path) -> tuple[list[tuple[Path, dict]], list[tuple[Path, dict]]]:
    """``(files with ranking metrics, other files)`` of the JSON files in ``results_dir``."""
    metric, other = [], []
    for path in sorted(results_dir.glob("*.json")) if results_dir.is_dir() else []:
        try:
            rec = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            log.warning("results file %s is not readable JSON: %s", path, err)
            continue
        if not isinstance(rec, dict):
            log.warning("results file %s does not hold a JSON object", path)
            continue
        is_metric = isinstance(rec.get("mean"), dict) and "variant" in rec
        (metric if is_metric else other).append((path, rec))
    keys = ("dataset", "backbone", "protocol", "split")
    metric.sort(key=lambda pr: (*map(str, map(pr[1].get, keys)), VARIANTS.get(pr[1]["variant"], 9)))
    return metric, other


def _mean_std(rec: dict, key: str) -> str:
    mean = rec["mean"].get(key)
    seeds = [s[key] for s in rec.get("per_seed", []) if isinstance(s.get(key), (int, float))]
    std = f"<br><small>± {statistics.stdev(seeds):.4f}</small>" if len(seeds) >= 2 else ""
    return _value(mean) + std


def _provenance(path: Path, rec: dict, root: Path) -> list[str]:
    runs = [r for r in rec.get("runs") or [] if isinstance(r, dict)]  # a merged file's seeds
    lines = [f"- file: `{path.relative_to(root) if path.is_relative_to(root) else path}`"]
    labels = ("command", "commit", "merged on" if runs else "machine", "wall time (s)", "finished")
    for key, label in zip(PROVENANCE, labels, strict=True):
        if rec.get(key) is not None:
            value = _machine(rec[key]) if key == "machine" else rec[key]
            lines.append(f"- {label}: `{value}`" if label in labels[:2] else f"- {label}: {value}")
    for run in runs:
        seeds, where = ", ".join(map(str, run.get("seeds") or [])), _machine(run.get("machine"))
        cmd, commit, wall = run.get("command"), run.get("git_commit"), run.get("wall_seconds")
        lines.append(f"- run of seed {seeds}: `{cmd}` at `{commit}`; {where}; {wall} s")
    return [*lines, *(f"- {k.replace('_', ' ')}: {_cell(rec[k])}" for k in NOTES if rec.get(k)), ""]


def bar_chart(records: list[tuple[Path, dict]], metrics: tuple[str, str]) -> str:
    """Horizontal SVG bar chart: two bars (one per metric) for each results file."""
    rows = [(p.stem, r["mean"]) for p, r in records if any(m in r["mean"] for m in metrics)]
    colors, label_w, bar_w, bar_h, gap, top = ("#3f72af", "#e07a2f"), 450, 380, 12, 10, 30
    vmax = max((float(mean.get(m, 0.0)) for _, mean in rows for m in metrics), default=0) or 1
    width, height = label_w + bar_w + 70, top + len(rows) * (2 * bar_h + gap) + 10
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" style="max-width:100%;height:auto" role="img" aria-label="'
        f'{" and ".join(metrics)} per results file" font-size="12" font-family="sans-serif">'
    ]
    for i, (metric, color) in enumerate(zip(metrics, colors, strict=True)):
        out.append(f'<rect x="{label_w + i * 110}" y="6" width="12" height="12" fill="{color}"/>')
        out.append(f'<text x="{label_w + i * 110 + 16}" y="16" fill="currentColor">{metric}</text>')
    for i, (stem, mean) in enumerate(rows):
        y = top + i * (2 * bar_h + gap)
        out.append(f'<text x="{label_w - 8}" y="{y + bar_h + 4}" text-anchor="end" ')
        out.append(f'fill="currentColor">{html.escape(stem)}</text>')
        for j, (metric, color) in enumerate(zip(metrics, colors, strict=True)):
            if isinstance(v := mean.get(metric), (int, float)):
                w, yy = max(1.0, bar_w * v / vmax), y + j * bar_h
                out.append(f'<rect x="{label_w}" y="{yy}" width="{w:.1f}" height="{bar_h - 1}" ')
                out.append(f'fill="{color}"/><text x="{label_w + w + 4:.1f}" y="{yy + bar_h - 2}" ')
                out.append(f'fill="currentColor">{v:.4f}</text>')
    return "".join([*out, "</svg>"])


TEST = tuple(f"test.{m}" for m in METRICS)
VS = ("plain", "raserec")
NOISY = tuple(f"{v}.{m}" for m in METRICS for v in VS)  # benchmarks/robustness.py
GROUPS = ["group", "users", "plain.NDCG@5", "raserec.NDCG@5", "change_percent.NDCG@5"]
TABLES: dict[str, list[str]] = {  # a list of rows in a results file -> the columns shown
    "settings": ["setting", "valid.HR@10", *TEST],  # benchmarks/sensitivity.py
    "summary": ["combo", "share_percent", "valid.HR@10", *TEST, "change_vs_all_percent.HR@5"],
    "ratios": ["ratio", "inserted_share", *NOISY, *(f"{v}_change_percent.HR@5" for v in VS)],
    "groupings.popularity": GROUPS,  # benchmarks/groups.py
    "groupings.length": GROUPS,
    "rows": ["index", "search_setting", "build_seconds", "us_per_query", "recall_at_20"],
}
FROZEN = {"settings": "plain", "summary": "plain_mean"}  # the frozen encoder's row, first


def analysis_tables(rec: dict) -> list[str]:
    """A table for each list of rows in ``rec`` that :data:`TABLES` names; ``[]`` if none."""
    out: list[str] = []
    for field, columns in TABLES.items():
        rows = _get(rec, field)
        if not (isinstance(rows, list) and rows and all(isinstance(r, dict) for r in rows)):
            continue
        if isinstance(frozen := rec.get(FROZEN.get(field, "")), dict):
            rows = [{columns[0]: "frozen encoder, no RAM", **frozen}, *rows]
        out += [f"`{field}`:", ""]
        out += _table(columns, ([_value(_get(r, c), c) for c in columns] for r in rows))
    return out


def _flat_scalars(rec: dict, prefix: str = "", deep: bool = True) -> list[list[str]]:
    """``[`field`, value]`` rows of the scalars (and lists of numbers) in ``rec``."""
    out: list[list[str]] = []
    for key, v in rec.items():
        if prefix or key not in (*PROVENANCE, *NOTES):
            if isinstance(v, dict) and deep:
                out += _flat_scalars(v, f"{prefix}{key}.")
            elif not isinstance(v, (dict, list)) or all(isinstance(x, (int, float)) for x in v):
                out.append([f"`{prefix}{key}`", _value(v)])
    return out


def _metric_row(path: Path, rec: dict) -> list[str]:
    seeds = _cell(", ".join(map(str, rec.get("seeds", []))))
    cells = [_cell(rec.get(k, "")) for k in ("dataset", "backbone", "variant", "protocol", "split")]
    return [*cells, seeds, *(_mean_std(rec, m) for m in METRICS), f"[{path.stem}](#{_slug(path)})"]


def render_results(root: Path = ROOT) -> str:
    """Tables, chart and provenance of ``benchmarks/results/*.json``."""
    metric, other = load_results(root / "benchmarks" / "results")
    if not metric and not other:
        return '!!! info "No results yet"\n\n    `benchmarks/results/` holds no `*.json` files.\n'
    head = ["dataset", "backbone", "variant", "protocol", "split", "seeds", *METRICS, "file"]
    out = [f"{len(metric)} files with ranking metrics; mean over seeds (± std).", ""]
    out += _table(head, (_metric_row(path, rec) for path, rec in metric))
    out += ["<figure>", bar_chart(metric, ("HR@10", "NDCG@10")), "<figcaption>HR@10 and NDCG@10 "
            "(mean over seeds) of each file above.</figcaption>", "</figure>", ""]  # fmt: skip
    for title, records in (("Runs", metric), ("Analyses and speed", other)):
        out += [f"## {title}", ""] if records else []
        for path, rec in records:
            out += [
                f"### {_cell(path.stem)} {{ #{_slug(path)} }}",
                "",
                *_provenance(path, rec, root),
            ]
            if records is metric:
                seeds = zip(rec.get("seeds") or [], rec.get("per_seed") or [], strict=False)
                rows = ([str(s), *map(_value, map(r.get, METRICS))] for s, r in seeds)
                out += _table(["seed", *METRICS], rows)
                if isinstance(lift := rec.get("lift"), dict):  # the RAM's paired lift
                    out += [f"Lift with the RAM ({lift['level']:.0%}): {lift['method']}.", ""]
                    rows = ([m, *(_value(r[c]) for c in LIFT)] for m, r in lift["metrics"].items())
                    out += _table(["metric", *LIFT], rows)
            else:
                tables = analysis_tables(rec)
                out += _table(["field", "value"], _flat_scalars(rec, deep=not tables)) + tables
    return "\n".join(out)


def render_faiss_measurements(root: Path = ROOT) -> str:
    """The index comparison that ``docs/faiss_bench.py`` measured."""
    path = root / "docs" / "measurements" / "faiss-indexes.json"
    rec = json.loads(path.read_text(encoding="utf-8"))
    return "\n".join([
        f"Measured by `{rec['command']}` ({rec['finished_at']}) on {_machine(rec.get('machine'))},"
        f" {rec['threads']} Faiss thread(s): {rec['n']:,} synthetic unit vectors of d = "
        f"{rec['d']} (1,000 Gaussian clusters), {rec['queries']:,} queries of top-{rec['k']}. "
        "`recall_at_20`: share of the exact top-20 found in the index's top-20; "
        "`build_seconds`: train + add; `us_per_query`: search time per query in µs.",
        "", *([f"Note: {rec['note']}", ""] if rec.get("note") else []), *analysis_tables(rec),
    ])  # fmt: skip


GENERATORS: dict[str, Callable[[Path], str]] = {"results": render_results}
GENERATORS["faiss-measurements"] = render_faiss_measurements
