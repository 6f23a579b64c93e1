"""MkDocs hooks: the generated parts of the documentation site.

Registered in ``mkdocs.yml`` under ``hooks:``. A page asks for generated Markdown with a marker
line ``<!-- gen:NAME -->``; :func:`on_page_markdown` replaces it with the output of
``GENERATORS[NAME]``. Nothing here is typed by hand:

* ``api``: reference of every name in ``raserec_adapter.__all__`` from signatures and
  Google-style docstrings (``inspect``; no plugin needed).
* ``settings``: the config dataclasses' fields, defaults and meanings.
* ``results``: tables and an SVG bar chart from ``benchmarks/results/*.json``.
* ``faiss-memory`` / ``faiss-measurements``: index memory formulas evaluated for d = 64, and
  the figures ``docs/faiss_bench.py`` wrote to ``docs/measurements/faiss-indexes.json``.
* ``checkpoint``: the ``config.json`` and ``bank/bank.json`` of a tiny augmenter saved now.
* ``pins``: the pinned development versions from ``constraints-dev.txt``.

An unknown marker or an unreadable results file is logged as a warning, so that
``mkdocs build --strict`` fails on it.
"""

from __future__ import annotations

import dataclasses
import html
import importlib
import inspect
import json
import logging
import math
import re
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("mkdocs.hooks.raserec_docs")

ROOT = Path(__file__).resolve().parents[1]
MARKER_RE = re.compile(r"^<!-- gen:([a-z-]+) -->[ \t]*$", re.M)
# "# docs: no-run  (reason)" marks code blocks the tests only compile; readers see "# reason".
NO_RUN_RE = re.compile(r"^([ \t]*)# docs: no-run[ \t]*(?:\((.*)\))?[ \t]*\n", re.M)
METRIC_ORDER = ("HR@5", "NDCG@5", "HR@10", "NDCG@10", "HR@20", "NDCG@20")
VARIANT_ORDER = {"plain": 0, "pretrained-plain": 1, "raserec": 2}


def _package() -> Any:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return importlib.import_module("raserec_adapter")


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """MkDocs event: expands ``<!-- gen:NAME -->`` markers."""

    def expand(match: re.Match[str]) -> str:
        name = match.group(1)
        generator = GENERATORS.get(name)
        if generator is None:
            log.warning("%s: unknown generator marker 'gen:%s'", page.file.src_path, name)
            return match.group(0)
        return generator(ROOT)

    markdown = NO_RUN_RE.sub(
        lambda m: f"{m.group(1)}# {m.group(2)}\n" if m.group(2) else "", markdown
    )
    return MARKER_RE.sub(expand, markdown)


# ------------------------------------------------------------------------------ docstrings
SECTION_RE = re.compile(
    r"^(Args|Arguments|Attributes|Returns|Yields|Raises|Examples?|Notes?|Warnings?):\s*$"
)
ITEM_RE = re.compile(r"^(\*{0,2}[\w.]+)\s*(?:\(([^)]*)\))?\s*:\s*(.*)$")
ROLE_RE = re.compile(r":(?:class|func|meth|attr|mod|data|exc|obj):`(~?)([^`]+)`")
BULLET_RE = re.compile(r"^(\s*(?:[*-]|\d+\.)\s+)(.*)$")


class DocContext:
    """Which API anchors exist, so that cross-references become links."""

    def __init__(self, anchors: set[str] | None = None, page: str = "") -> None:
        self.anchors = anchors or set()
        self.page = page

    def ref(self, target: str, short: bool) -> str:
        parts = target.split(".")
        text = parts[-1] if short else target
        for n in (2, 1):
            key = "-".join(parts[-n:])
            if len(parts) >= n and key in self.anchors:
                return f"[`{text}`]({self.page}#{key})"
        return f"`{text}`"


def _escape_text(text: str) -> str:
    """Markdown-safe plain text (no accidental emphasis or HTML tags)."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return re.sub(r"([*_\\])", r"\\\1", text)


def inline(text: str, ctx: DocContext) -> str:
    """reST-flavoured docstring text -> Markdown (``code``, :role:`target`)."""
    out: list[str] = []
    pos = 0
    pattern = re.compile(r"``(.+?)``|" + ROLE_RE.pattern + r"|`([^`]+)`")
    for m in pattern.finditer(text):
        out.append(_escape_text(text[pos : m.start()]))
        if m.group(1) is not None:
            out.append(_code_span(m.group(1)))
        elif m.group(3) is not None:
            out.append(ctx.ref(m.group(3).lstrip("~"), bool(m.group(2))))
        else:
            out.append(_code_span(m.group(4)))
        pos = m.end()
    out.append(_escape_text(text[pos:]))
    return "".join(out)


def _code_span(code: str) -> str:
    fence = "``" if "`" in code else "`"
    pad = " " if code.startswith("`") or code.endswith("`") else ""
    return f"{fence}{pad}{code}{pad}{fence}"


def _inline_lines(lines: list[str], ctx: DocContext) -> list[str]:
    out = []
    for line in lines:
        m = BULLET_RE.match(line)
        out.append(m.group(1) + inline(m.group(2), ctx) if m else inline(line, ctx))
    return out


def _dedent(lines: list[str]) -> list[str]:
    widths = [len(x) - len(x.lstrip()) for x in lines if x.strip()]
    cut = min(widths, default=0)
    return [x[cut:] for x in lines]


def _doctest_blocks(lines: list[str], ctx: DocContext) -> list[str]:
    """Free text with ``>>>`` paragraphs turned into ``pycon`` code blocks."""
    out: list[str] = []
    i = 0
    while i < len(lines):
        if lines[i].lstrip().startswith(">>>"):
            code = []
            while i < len(lines) and lines[i].strip():
                code.append(re.sub(r"\s*# doctest:.*$", "", lines[i]))
                i += 1
            out += ["", "```pycon", *_dedent(code), "```", ""]
        else:
            out += _inline_lines([lines[i]], ctx)
            i += 1
    return out


def parse_items(block: list[str]) -> list[tuple[str, str, str]]:
    """``name (type): text`` items of an Args/Attributes/Raises block."""
    items: list[tuple[str, str, str]] = []
    for line in _dedent(block):
        if not line.strip():
            continue
        m = ITEM_RE.match(line)
        if m and not line.startswith(" "):
            items.append((m.group(1), m.group(2) or "", m.group(3).strip()))
        elif items:
            name, kind, text = items[-1]
            items[-1] = (name, kind, f"{text} {line.strip()}".strip())
        else:
            items.append(("", "", line.strip()))
    return items


def split_sections(doc: str) -> list[tuple[str, list[str]]]:
    """``[(section or "", lines)]`` of a cleaned Google-style docstring."""
    sections: list[tuple[str, list[str]]] = [("", [])]
    for line in doc.splitlines():
        m = SECTION_RE.match(line)
        if m:
            sections.append((m.group(1), []))
        elif sections[-1][0] and line.strip() and not line.startswith(" "):
            sections.append(("", [line]))
        else:
            sections[-1][1].append(line)
    return [(name, lines) for name, lines in sections if name or any(x.strip() for x in lines)]


def docstring_markdown(doc: str | None, ctx: DocContext) -> str:
    """A Google-style docstring as Markdown."""
    if not doc:
        return ""
    out: list[str] = []
    for name, lines in split_sections(inspect.cleandoc(doc)):
        if not name:
            out += [*_doctest_blocks(lines, ctx), ""]
        elif name in ("Args", "Arguments", "Attributes", "Raises"):
            title = {"Arguments": "Args"}.get(name, name)
            out += [f"**{title}**", ""]
            for item, kind, text in parse_items(lines):
                label = ctx.ref(item, True) if name == "Raises" else f"`{item}`"
                kind_md = f" ({inline(kind, ctx)})" if kind else ""
                out.append(f"- {label}{kind_md}: {inline(text, ctx)}" if item else f"- {text}")
            out.append("")
        elif name in ("Returns", "Yields"):
            out += [f"**{name}**", "", *_inline_lines(_dedent(lines), ctx), ""]
        elif name.startswith("Example"):
            out += ["**Example**", "", *_doctest_blocks(_dedent(lines), ctx), ""]
        else:
            kind = "warning" if name.startswith("Warning") else "note"
            body = _inline_lines(_dedent(lines), ctx)
            out += [f"!!! {kind}", "", *("    " + x if x.strip() else "" for x in body), ""]
    text = "\n".join(out)
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


# ------------------------------------------------------------------------------ signatures
def _annotation(a: Any) -> str:
    if a is inspect.Parameter.empty:
        return ""
    return a if isinstance(a, str) else inspect.formatannotation(a)


def _default(owner: Any, name: str, value: Any) -> str:
    if repr(value) == "<factory>" and dataclasses.is_dataclass(owner):
        field = {f.name: f for f in dataclasses.fields(owner)}.get(name)
        factory = getattr(field, "default_factory", None)
        if callable(factory):
            return f"{getattr(factory, '__name__', 'factory')}()"
    return repr(value)


def format_signature(
    name: str, obj: Any, *, prefix: str = "def ", drop_first: bool = False, owner: Any = None
) -> str:
    """``def name(a: int = 1, *, b: str) -> X``, wrapped one parameter per line when long."""
    sig = inspect.signature(obj)
    params = list(sig.parameters.values())
    if drop_first and params:
        params = params[1:]
    parts: list[str] = []
    star_done = False
    for i, p in enumerate(params):
        if p.kind is p.KEYWORD_ONLY and not star_done:
            parts.append("*")
            star_done = True
        if p.kind is p.VAR_POSITIONAL:
            star_done = True
        stars = {p.VAR_POSITIONAL: "*", p.VAR_KEYWORD: "**"}.get(p.kind, "")
        ann = _annotation(p.annotation)
        text = stars + p.name + (f": {ann}" if ann else "")
        if p.default is not p.empty:
            text += (" = " if ann else "=") + _default(owner, p.name, p.default)
        parts.append(text)
        nxt = params[i + 1] if i + 1 < len(params) else None
        if p.kind is p.POSITIONAL_ONLY and (nxt is None or nxt.kind is not p.POSITIONAL_ONLY):
            parts.append("/")
    ret = _annotation(sig.return_annotation)
    tail = f" -> {ret}" if ret and prefix.strip() != "class" else ""
    one = f"{prefix}{name}({', '.join(parts)}){tail}"
    if len(one) <= 92:
        return one
    body = "".join(f"    {x},\n" for x in parts)
    return f"{prefix}{name}(\n{body}){tail}"


# ------------------------------------------------------------------------------ API page
API_SECTIONS: list[tuple[str, tuple[str, ...]]] = [
    ("The augmenter", ("augmenter",)),
    ("Configuration", ("config",)),
    ("Encoders", ("encoder",)),
    ("Data", ("data", "readers", "datasets")),
    ("Pre-training", ("pretraining",)),
    ("Memory banks", ("bank", "faiss_bank")),
    ("Retrieval-Augmented Module", ("ram",)),
    ("Layers", ("layers",)),
    ("Evaluation", ("evaluation", "metrics")),
    ("Reporting", ("reporting",)),
]


def _home_module(pkg: Any, name: str, obj: Any) -> str:
    """Submodule (short name) that defines ``obj``."""
    mod = getattr(obj, "__module__", None)
    if isinstance(mod, str) and mod.startswith(pkg.__name__ + "."):
        return mod.split(".", 1)[1]
    for modname, module in sorted(sys.modules.items()):
        if modname.startswith(pkg.__name__ + ".") and getattr(module, name, None) is obj:
            return modname.split(".", 1)[1]
    return ""


def _source_line(obj: Any) -> int:
    try:
        return inspect.getsourcelines(obj)[1]
    except (OSError, TypeError):
        return 10**9


def _members(cls: type, pkg_name: str) -> list[tuple[str, str, Any]]:
    """Public methods and properties defined in ``cls`` or its bases from this package."""
    seen: dict[str, tuple[str, str, Any]] = {}
    for base in reversed(cls.__mro__):
        if not base.__module__.startswith(pkg_name + ".") or issubclass(base, BaseException):
            continue
        for attr, raw in vars(base).items():
            if attr.startswith("_"):
                continue
            if isinstance(raw, property):
                seen[attr] = ("property", attr, raw)
            elif isinstance(raw, classmethod):
                seen[attr] = ("classmethod", attr, getattr(cls, attr))
            elif isinstance(raw, staticmethod):
                seen[attr] = ("staticmethod", attr, raw.__func__)
            elif inspect.isfunction(raw):
                seen[attr] = ("method", attr, raw)
    return sorted(seen.values(), key=lambda m: _source_line(m[2]) if m[0] != "property" else 0)


def _render_member(cls: type, kind: str, attr: str, obj: Any, ctx: DocContext) -> list[str]:
    anchor = f"{cls.__name__}-{attr}"
    out = [f"#### `{cls.__name__}.{attr}` {{ #{anchor} }}", ""]
    if kind == "property":
        ret = ""
        if obj.fget is not None:
            ret = _annotation(inspect.signature(obj.fget).return_annotation)
        out += ["```python", f"property {attr}" + (f": {ret}" if ret else ""), "```", ""]
        doc = obj.__doc__
    else:
        prefix = {"classmethod": "@classmethod\ndef ", "staticmethod": "@staticmethod\ndef "}
        sig = format_signature(
            attr, obj, prefix=prefix.get(kind, "def "), drop_first=kind == "method", owner=cls
        )
        out += ["```python", sig, "```", ""]
        doc = inspect.getdoc(obj)
    body = docstring_markdown(doc, ctx)
    return out + ([body] if body else [])


def _render_mapping(name: str, obj: dict[Any, Any]) -> list[str]:
    values = list(obj.values())
    if not values or not all(dataclasses.is_dataclass(v) for v in values):
        return ["```python", f"{name}: dict  # {len(obj)} entries", "```", ""]
    cls = type(values[0])
    cols = [f.name for f in dataclasses.fields(cls) if f.name != "sha256"]
    out = [
        f"`dict[str, {cls.__name__}]`: the registered datasets "
        f"(see [`{cls.__name__}`](#{cls.__name__}); each file's SHA-256 is checked on load).",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    for v in values:
        cells = []
        for c in cols:
            x = getattr(v, c)
            cells.append(f"{x:,}" if isinstance(x, int) else f"`{x}`")
        out.append("| " + " | ".join(cells) + " |")
    return [*out, ""]


def _render_object(pkg: Any, name: str, obj: Any, ctx: DocContext) -> list[str]:
    out = [f"### `{name}` {{ #{name} }}", ""]
    if inspect.isclass(obj):
        if issubclass(obj, BaseException):
            bases = ", ".join(b.__name__ for b in obj.__bases__)
            out += ["```python", f"class {name}({bases})", "```", ""]
        elif getattr(obj, "_is_protocol", False):
            out += ["```python", f"class {name}(Protocol)", "```", ""]
        else:
            out += ["```python", format_signature(name, obj, prefix="class ", owner=obj), "```", ""]
        out.append(docstring_markdown(inspect.getdoc(obj), ctx))
        if not issubclass(obj, BaseException):
            for kind, attr, member in _members(obj, pkg.__name__):
                out += _render_member(obj, kind, attr, member, ctx)
    elif callable(obj):
        out += ["```python", format_signature(name, obj), "```", ""]
        out.append(docstring_markdown(inspect.getdoc(obj), ctx))
    elif isinstance(obj, dict):
        out += _render_mapping(name, obj)
    else:
        out += ["```python", f"{name} = {obj!r}", "```", ""]
    return out


def _api_anchors(pkg: Any) -> set[str]:
    anchors = set(pkg.__all__)
    for name in pkg.__all__:
        obj = getattr(pkg, name)
        if inspect.isclass(obj) and not issubclass(obj, BaseException):
            anchors |= {f"{name}-{attr}" for _, attr, _ in _members(obj, pkg.__name__)}
    return anchors


def render_api(root: Path = ROOT) -> str:
    """Markdown reference of every name in ``raserec_adapter.__all__``."""
    pkg = _package()
    ctx = DocContext(_api_anchors(pkg))
    groups: dict[str, list[tuple[int, str, Any]]] = {}
    for name in pkg.__all__:
        obj = getattr(pkg, name)
        groups.setdefault(_home_module(pkg, name, obj), []).append((_source_line(obj), name, obj))
    sections = list(API_SECTIONS)
    known = {m for _, mods in sections for m in mods}
    rest = tuple(sorted(m for m in groups if m not in known))
    if rest:
        sections.append(("Other", rest))
    out = [
        f"Generated from the docstrings of the {len(pkg.__all__)} names in "
        f"`raserec_adapter.__all__` (version {pkg.__version__}) when the site is built.",
        "",
    ]
    for title, mods in sections:
        entries = [e for m in mods for e in sorted(groups.get(m, []), key=lambda e: e[:2])]
        if not entries:
            continue
        names = ", ".join(f"[`{n}`](#{n})" for _, n, _ in entries)
        out += [f"## {title}", "", names, ""]
        for _, name, obj in entries:
            out += _render_object(pkg, name, obj, ctx)
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------ settings
def render_settings(root: Path = ROOT) -> str:
    """One table per config dataclass: field, default, meaning (from the docstrings)."""
    pkg = _package()
    ctx = DocContext(_api_anchors(pkg), page="api.md")
    out: list[str] = []
    for cls_name in ("PretrainConfig", "BankConfig", "RAMConfig", "RAFTConfig", "AugmenterConfig"):
        cls = getattr(pkg, cls_name)
        meaning: dict[str, str] = {}
        for section, lines in split_sections(inspect.getdoc(cls) or ""):
            if section == "Attributes":
                meaning = {n: t for n, _, t in parse_items(lines)}
        first = (inspect.getdoc(cls) or "").splitlines()[0]
        out += [f"**[`{cls_name}`](api.md#{cls_name})**: {inline(first, ctx)}", ""]
        out += ["| field | default | meaning |", "|---|---|---|"]
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                default = repr(f.default)
            else:
                default = f"{getattr(f.default_factory, '__name__', '?')}()"
            text = inline(meaning.get(f.name, ""), ctx).replace("|", "\\|")
            out.append(f"| `{f.name}` | `{default}` | {text} |")
        out.append("")
    return "\n".join(out)


# ------------------------------------------------------------------------------ results
def load_results(results_dir: Path) -> tuple[list[tuple[Path, dict]], list[tuple[Path, dict]]]:
    """``(metric records, other records)`` of the JSON files in ``results_dir``."""
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
        if isinstance(rec.get("mean"), dict) and "variant" in rec:
            metric.append((path, rec))
        else:
            other.append((path, rec))
    metric.sort(
        key=lambda pr: (
            str(pr[1].get("dataset")),
            str(pr[1].get("backbone")),
            str(pr[1].get("protocol")),
            str(pr[1].get("split")),
            VARIANT_ORDER.get(str(pr[1].get("variant")), 9),
            str(pr[1].get("variant")),
        )
    )
    return metric, other


def _slug(path: Path) -> str:
    return "run-" + re.sub(r"[^a-z0-9]+", "-", path.stem.lower()).strip("-")


def _cell(x: Any) -> str:
    return html.escape(str(x), quote=False).replace("|", "\\|")


def _metric_keys(records: list[tuple[Path, dict]]) -> list[str]:
    keys = {k for _, r in records for k in r["mean"]}
    ordered = [k for k in METRIC_ORDER if k in keys]
    return ordered + sorted(keys - set(ordered))


def _mean_std(rec: dict, key: str) -> str:
    mean = rec["mean"].get(key)
    if not isinstance(mean, (int, float)):
        return ""
    per_seed = [s[key] for s in rec.get("per_seed", []) if isinstance(s.get(key), (int, float))]
    if len(per_seed) >= 2:
        return f"{mean:.4f}<br><small>± {statistics.stdev(per_seed):.4f}</small>"
    return f"{mean:.4f}"


def _machine(m: Any) -> str:
    if not isinstance(m, dict):
        return _cell(m)
    parts = [str(m.get("cpu", "?"))]
    if m.get("cpu_cores"):
        parts[0] += f" ({m['cpu_cores']} cores)"
    if m.get("gpu"):
        parts.append(f"GPU {m['gpu']}")
    if m.get("torch_threads"):
        parts.append(f"{m['torch_threads']} torch threads")
    for key in ("torch", "faiss", "python"):
        if m.get(key):
            parts.append(f"{key} {m[key]}")
    return _cell(", ".join(parts))


NOTE_KEYS = ("model_note", "note", "run_history", "wall_seconds_note")  # free text in results


def _provenance(path: Path, rec: dict, root: Path) -> list[str]:
    rel = path.relative_to(root) if path.is_relative_to(root) else path
    lines = [f"- file: `{rel}`"]
    if rec.get("command"):
        lines.append(f"- command: `{rec['command']}`")
    if rec.get("git_commit"):
        lines.append(f"- commit: `{rec['git_commit']}`")
    runs = rec.get("runs") if isinstance(rec.get("runs"), list) else []  # merge_seeds' list
    runs = [r for r in runs if isinstance(r, dict)]
    if rec.get("machine"):
        label = "merged on" if runs else "machine"
        lines.append(f"- {label}: {_machine(rec['machine'])}")
    if rec.get("wall_seconds") is not None:
        lines.append(f"- wall time: {rec['wall_seconds']} s")
    if rec.get("finished_at"):
        lines.append(f"- finished: {rec['finished_at']}")
    for run in runs:  # a merged file: each seed's own run
        seeds = ", ".join(str(s) for s in run.get("seeds") or [])
        where = _machine(run["machine"]) if run.get("machine") else "?"
        lines.append(
            f"- run of seed {seeds}: `{run.get('command')}` at `{run.get('git_commit')}`; "
            f"{where}; {run.get('wall_seconds')} s"
        )
    for key in NOTE_KEYS:
        if rec.get(key):
            lines.append(f"- {key.replace('_', ' ')}: {_cell(rec[key])}")
    return lines


def bar_chart(records: list[tuple[Path, dict]], metrics: tuple[str, str]) -> str:
    """Horizontal SVG bar chart: one group per record, one bar per metric."""
    rows = [
        {**r, "_stem": p.stem}
        for p, r in records
        if any(isinstance(r["mean"].get(m), float) for m in metrics)
    ]
    if not rows:
        return ""
    colors = ("#3f72af", "#e07a2f")
    label_w, bar_w, bar_h, gap, top = 450, 380, 12, 10, 30
    vmax = max(float(r["mean"].get(m, 0.0)) for r in rows for m in metrics) or 1.0
    height = top + len(rows) * (2 * bar_h + gap) + 10
    width = label_w + bar_w + 70
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" style="max-width:100%;height:auto" role="img" '
        f'aria-label="{" and ".join(metrics)} per results file" font-size="12" '
        f'font-family="sans-serif">'
    ]
    for i, (metric, color) in enumerate(zip(metrics, colors, strict=True)):
        x = label_w + i * 110
        parts.append(f'<rect x="{x}" y="6" width="12" height="12" fill="{color}"/>')
        parts.append(f'<text x="{x + 16}" y="16" fill="currentColor">{metric}</text>')
    for i, r in enumerate(rows):
        y = top + i * (2 * bar_h + gap)
        label = r["_stem"]
        parts.append(
            f'<text x="{label_w - 8}" y="{y + bar_h + 4}" text-anchor="end" '
            f'fill="currentColor">{html.escape(label)}</text>'
        )
        for j, (metric, color) in enumerate(zip(metrics, colors, strict=True)):
            v = r["mean"].get(metric)
            if not isinstance(v, (int, float)):
                continue
            w = max(1.0, bar_w * float(v) / vmax)
            yy = y + j * bar_h
            parts.append(
                f'<rect x="{label_w}" y="{yy}" width="{w:.1f}" height="{bar_h - 1}" '
                f'fill="{color}"/>'
            )
            parts.append(
                f'<text x="{label_w + w + 4:.1f}" y="{yy + bar_h - 2}" '
                f'fill="currentColor">{v:.4f}</text>'
            )
    parts.append("</svg>")
    return "".join(parts)


def _flat_scalars(rec: dict, prefix: str = "") -> list[tuple[str, str]]:
    skip = {"command", "git_commit", "machine", "wall_seconds", "finished_at"}
    out: list[tuple[str, str]] = []
    for key, value in rec.items():
        if not prefix and key in skip:
            continue
        name = prefix + str(key)
        if isinstance(value, dict):
            out += _flat_scalars(value, name + ".")
        elif isinstance(value, list) and all(isinstance(v, (int, float)) for v in value):
            out.append((name, ", ".join(_num(v) for v in value)))
        elif isinstance(value, (str, int, float, bool)) or value is None:
            out.append((name, _num(value)))
    return out


def _num(v: Any) -> str:
    if isinstance(v, float) and not isinstance(v, bool):
        return f"{v:.4g}" if math.isfinite(v) else str(v)
    return str(v)


SWEEP_METRICS = ("HR@5", "NDCG@5", "HR@10", "NDCG@10")


def _fmt4(d: Any, key: str) -> str:
    v = d.get(key) if isinstance(d, dict) else None
    return f"{v:.4f}" if isinstance(v, (int, float)) and not isinstance(v, bool) else ""


def sweep_table(rec: dict) -> list[str]:
    """Markdown table of a RAM sweep (``benchmarks/sensitivity.py``); ``[]`` for other files."""
    rows = rec.get("settings")
    plain = rec.get("plain")
    if not (isinstance(rows, list) and rows and isinstance(plain, dict)):
        return []
    if not all(isinstance(r, dict) and {"setting", "valid", "test"} <= set(r) for r in rows):
        return []
    metric = str(rec.get("selection_metric", "valid HR@10")).removeprefix("valid ")
    if "selected_by_valid" in rec:
        metric = str(rec["selected_by_valid"].get("metric", metric)).removeprefix("valid ")
    chosen = rec.get("selected_by_valid", {}).get("setting")

    head = ["setting", f"valid {metric}", *(f"test {m}" for m in SWEEP_METRICS)]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out.append(
        "| frozen encoder, no RAM | "
        + " | ".join(
            [_fmt4(plain.get("valid", {}), metric)]
            + [_fmt4(plain.get("test", {}), m) for m in SWEEP_METRICS]
        )
        + " |"
    )
    for r in rows:
        s = r["setting"]
        label = ", ".join(f"{k} {v}" for k, v in s.items()) if isinstance(s, dict) else str(s)
        if s == chosen:
            label = f"**{label}** (selected)"
        cells = [_fmt4(r["valid"], metric)] + [_fmt4(r["test"], m) for m in SWEEP_METRICS]
        out.append(f"| {_cell(label)} | " + " | ".join(cells) + " |")
    return [*out, ""]


def partitions_table(rec: dict) -> list[str]:
    """Markdown table of a bank-partition study (``benchmarks/partitions.py``); else ``[]``."""
    rows = rec.get("summary")
    if rec.get("parts") is None or not (isinstance(rows, list) and rows):
        return []
    if not all(isinstance(r, dict) and {"combo", "test", "valid"} <= set(r) for r in rows):
        return []
    metric = str(rec.get("selection_metric", "valid HR@10")).removeprefix("valid ")
    head = ["memory bank", "share of memories %", f"valid {metric}"]
    head += [f"test {m}" for m in SWEEP_METRICS] + ["HR@5 / NDCG@5 vs All"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    frozen = rec.get("plain_mean", {})
    out.append(
        "| frozen encoder, no RAM | | "
        + " | ".join(
            [_fmt4(frozen.get("valid"), metric)]
            + [_fmt4(frozen.get("test"), m) for m in SWEEP_METRICS]
        )
        + " | |"
    )
    for r in rows:
        ch = r.get("change_vs_all_percent") or {}
        change = " / ".join(
            f"{ch[m]:+.1f}%" if isinstance(ch.get(m), (int, float)) else ""
            for m in SWEEP_METRICS[:2]
        )
        cells = [
            _cell(str(r["combo"])),
            _num(r.get("share_percent", "")),
            _fmt4(r["valid"], metric),
        ]
        cells += [_fmt4(r["test"], m) for m in SWEEP_METRICS] + [change]
        out.append("| " + " | ".join(cells) + " |")
    return [*out, ""]


def robustness_table(rec: dict) -> list[str]:
    """Markdown table of a noise study (``benchmarks/robustness.py``); else ``[]``."""
    rows = rec.get("ratios")
    if not (isinstance(rows, list) and rows):
        return []
    if not all(isinstance(r, dict) and {"ratio", "plain", "raserec"} <= set(r) for r in rows):
        return []
    head = ["noise ratio", "inserted share"]
    head += [f"{m} frozen -> RAM (change %)" for m in SWEEP_METRICS]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [_num(r["ratio"]), _num(r.get("inserted_share", ""))]
        for m in SWEEP_METRICS:
            a = (r.get("plain_change_percent") or {}).get(m)
            b = (r.get("raserec_change_percent") or {}).get(m)
            pct = f" ({a:+.1f} / {b:+.1f})" if isinstance(a, float) and isinstance(b, float) else ""
            cells.append(f"{_fmt4(r['plain'], m)} -> {_fmt4(r['raserec'], m)}{pct}")
        out.append("| " + " | ".join(cells) + " |")
    return [*out, ""]


def render_results(root: Path = ROOT) -> str:
    """Results tables, chart and provenance from ``benchmarks/results/*.json``."""
    results_dir = root / "benchmarks" / "results"
    metric, other = load_results(results_dir)
    if not metric and not other:
        return (
            '!!! info "No results yet"\n\n'
            "    `benchmarks/results/` holds no `*.json` files yet, so there is nothing to "
            "show. Results appear here after a run such as\n\n"
            "        python examples/sasrec.py --dataset beauty --seeds 0 1 2 "
            "--results-dir benchmarks/results\n\n"
            "    and a rebuild of the site.\n"
        )
    out: list[str] = []
    if metric:
        keys = _metric_keys(metric)
        show_split = any(rec.get("split", "test") != "test" for _, rec in metric)
        out += [
            f"{len(metric)} results file(s) with ranking metrics"
            + ("" if show_split else ", all on the test split")
            + ". Metric cells are the mean over the listed seeds (± sample standard deviation "
            "when there are several).",
            "",
            "| dataset | backbone | variant | protocol | "
            + ("split | " if show_split else "")
            + "seeds | "
            + " | ".join(keys)
            + " | results file |",
            "|" + "---|" * (6 + show_split + len(keys)),
        ]
        for path, rec in metric:
            seeds = rec.get("seeds", [])
            cells = [
                _cell(rec.get("dataset", "")),
                _cell(rec.get("backbone", "")),
                _cell(rec.get("variant", "")),
                _cell(rec.get("protocol", "")),
                *([_cell(rec.get("split", ""))] if show_split else []),
                _cell(", ".join(map(str, seeds)) if isinstance(seeds, list) else seeds),
                *(_mean_std(rec, k) for k in keys),
                f"[{path.stem}](#{_slug(path)})",
            ]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
        chart_metrics = ("HR@10", "NDCG@10") if "NDCG@10" in keys else tuple(keys[:2])
        if len(chart_metrics) == 2:
            svg = bar_chart(metric, chart_metrics)  # type: ignore[arg-type]
            if svg:
                out += [
                    "<figure>",
                    svg,
                    f"<figcaption>{' and '.join(chart_metrics)} (mean over seeds) of each "
                    "results file, drawn from the same files as the table.</figcaption>",
                    "</figure>",
                    "",
                ]
        out += ["## Runs", ""]
        for path, rec in metric:
            out += [f"### {_cell(path.stem)} {{ #{_slug(path)} }}", ""]
            out += [*_provenance(path, rec, root), ""]
            per_seed = [s for s in rec.get("per_seed", []) if isinstance(s, dict)]
            if per_seed and isinstance(rec.get("seeds"), list):
                out += ["| seed | " + " | ".join(keys) + " |", "|" + "---|" * (len(keys) + 1)]
                for seed, row in zip(rec["seeds"], per_seed, strict=False):
                    vals = [f"{row[k]:.4f}" if k in row else "" for k in keys]
                    out.append(f"| {seed} | " + " | ".join(vals) + " |")
                out.append("")
    if other:
        out += ["## Other benchmark files", ""]
        for path, rec in other:
            out += [f"### {_cell(path.stem)} {{ #{_slug(path)} }}", ""]
            out += [*_provenance(path, rec, root), ""]
            shown: set[str] = set()  # fields already in a table
            table = sweep_table(rec)
            if table:
                shown = {"plain", "settings"}
            elif table := partitions_table(rec):
                shown = {"summary", "plain_mean"}
            elif table := robustness_table(rec):
                shown = {"ratios"}
            out += table
            scalars = _flat_scalars({k: v for k, v in rec.items() if k not in shown})
            if scalars:
                out += ["| field | value |", "|---|---|"]
                out += [f"| `{k}` | {_cell(v)} |" for k, v in scalars]
                out.append("")
    return "\n".join(out)


# ------------------------------------------------------------------------------ Faiss
def faiss_memory_rows(d: int = 64) -> list[tuple[str, str, float]]:
    """``(index, formula, bytes per vector)`` of index memory; formulas from Faiss's layouts."""
    m_pq, m_hnsw = 16, 32
    hnsw = 4 * d + 4 * (2 * m_hnsw + m_hnsw / (m_hnsw - 1)) + 4 + 8
    return [
        ("Flat", "4·d", 4 * d),
        ("IVFnlist,Flat", "4·d + 8 (id); once: 4·d·nlist centroids", 4 * d + 8),
        (
            f"IVFnlist,PQ{m_pq} (8-bit codes)",
            f"m + 8 (id), m = {m_pq}; once: 4·d·nlist centroids + 4·256·d codebooks",
            m_pq + 8,
        ),
        (
            f"HNSW{m_hnsw},Flat",
            f"4·d + 4·(2M + M/(M−1)) links + 4 (level) + 8 (offset), M = {m_hnsw}, on average",
            hnsw,
        ),
    ]


BESIDE_INDEX = "4·d keys + 4·d values + 8 user + 8 length + 4·d normalised keys"


def render_faiss_memory(root: Path = ROOT) -> str:
    """Index memory formulas evaluated for d = 64, plus what the bank stores beside them."""
    d = 64
    beside = 3 * 4 * d + 8 + 8
    out = [
        f"Formulas, evaluated for d = {d} (float32). 1 MB = 10^6 bytes; "
        "per million memories = bytes per memory × 10^6.",
        "",
        "| index_factory | index bytes per memory | d = 64 | index, per 10^6 memories "
        "| whole `FaissMemoryBank`, per 10^6 memories |",
        "|---|---|---|---|---|",
    ]
    for name, formula, b in faiss_memory_rows(d):
        out.append(f"| `{name}` | {formula} | {b:.0f} B | {b:.0f} MB | {b + beside:.0f} MB |")
    out += [
        "",
        f"The last column adds what the bank keeps beside the index: {BESIDE_INDEX} "
        f"= {beside} B per memory at d = {d}. A `TorchMemoryBank` needs the same "
        f"{beside} B per memory on its device and no index.",
        "",
    ]
    return "\n".join(out)


def render_faiss_measurements(root: Path = ROOT) -> str:
    path = root / "docs" / "measurements" / "faiss-indexes.json"
    if not path.is_file():
        return "No measurements file (`docs/measurements/faiss-indexes.json`) yet.\n"
    rec = json.loads(path.read_text(encoding="utf-8"))
    m = rec.get("machine", {})
    out = [
        f"Measured: `{rec['command']}` ({rec['finished_at']}) on {_machine(m)}, "
        f"{rec['threads']} Faiss thread(s). {rec['n']:,} synthetic unit vectors of d = "
        f"{rec['d']} (a mixture of 1,000 Gaussian clusters), {rec['queries']:,} queries of "
        f"top-{rec['k']}. Recall@20 = share of the exact top-20 found in the index's top-20.",
        "",
    ]
    if rec.get("note"):
        out += [f"Note: {rec['note']}", ""]
    out += [
        "| index_factory | search setting | build (train + add) | search, per query "
        "| recall@20 | index bytes per vector (serialized) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rec["rows"]:
        out.append(
            f"| `{r['index']}` | {r['search_setting']} | {r['build_seconds']:.2f} s "
            f"| {r['us_per_query']:.0f} µs | {r['recall_at_20']:.3f} "
            f"| {r['index_bytes_per_vector']:.1f} |"
        )
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------ checkpoint
def render_checkpoint(root: Path = ROOT) -> str:
    """Saves a tiny augmenter now and shows its files, ``config.json`` and ``bank.json``."""
    _package()
    import torch

    from examples.models import SASRec
    from raserec_adapter import (
        AugmenterConfig,
        BankConfig,
        RAMConfig,
        RetrievalAugmenter,
        Sequences,
        leave_one_out,
    )

    torch.manual_seed(0)
    rows = [[(u + i) % 12 + 1 for i in range(6)] for u in range(24)]
    split = leave_one_out(Sequences.from_lists(rows, num_items=12), max_len=10)
    config = AugmenterConfig(max_len=10, bank=BankConfig(index_factory="Flat"), ram=RAMConfig(k=3))
    aug = RetrievalAugmenter(SASRec(num_items=12, hidden_size=8, max_len=10), config)
    aug.build_bank(split, show_progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "checkpoint"
        aug.save(path)
        files = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())
        config_json = (path / "config.json").read_text(encoding="utf-8").strip()
        bank_json = (path / "bank" / "bank.json").read_text(encoding="utf-8").strip()
    return "\n".join(
        [
            "Files written by `save` for a tiny augmenter (SASRec with hidden size 8, "
            '12 items, `BankConfig(index_factory="Flat")`, `RAMConfig(k=3)`), generated '
            "when this site was built:",
            "",
            "```text",
            *files,
            "```",
            "",
            "`config.json`:",
            "",
            "```json",
            config_json,
            "```",
            "",
            "`bank/bank.json`:",
            "",
            "```json",
            bank_json,
            "```",
            "",
        ]
    )


# ------------------------------------------------------------------------------ pins
def render_pins(root: Path = ROOT) -> str:
    lines = (root / "constraints-dev.txt").read_text(encoding="utf-8").splitlines()
    pins = [x.split("==") for x in lines if "==" in x and not x.lstrip().startswith("#")]
    out = ["| package | pinned version |", "|---|---|"]
    out += [f"| `{name.strip()}` | {version.strip()} |" for name, version in pins]
    return "\n".join(out) + "\n"


GENERATORS: dict[str, Callable[[Path], str]] = {
    "api": render_api,
    "settings": render_settings,
    "results": render_results,
    "faiss-memory": render_faiss_memory,
    "faiss-measurements": render_faiss_measurements,
    "checkpoint": render_checkpoint,
    "pins": render_pins,
}
