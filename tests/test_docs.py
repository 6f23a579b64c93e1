"""The documentation cannot rot: its code runs, its names exist, the site builds strictly.

Every fenced ```python block in ``docs/*.md`` runs, page by page in one namespace per page, in a
temporary working directory. A block whose first line starts with ``# docs: no-run`` (it needs
real data, a GPU or long training) is compiled instead, and every name it imports from
``raserec_adapter`` or ``examples`` must exist. README.md's blocks use the real Beauty dataset
and the full schedule, so they get the compile-and-import check only.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
NO_RUN = "# docs: no-run"
FENCE_RE = re.compile(
    r"^(?P<indent>[ \t]*)```python[^\n]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.M | re.S
)
PAGES = sorted(DOCS.glob("*.md"))


def python_blocks(path: Path) -> list[tuple[int, str]]:
    """``(line number, code)`` of each ```python block of a Markdown file."""
    text = path.read_text(encoding="utf-8")
    out = []
    for m in FENCE_RE.finditer(text):
        indent = len(m.group("indent"))
        code = "".join(line[indent:] for line in m.group("body").splitlines(keepends=True))
        out.append((text.count("\n", 0, m.start()) + 2, code))
    return out


def is_no_run(code: str) -> bool:
    return code.lstrip().startswith(NO_RUN)


def check_imports(code: str, where: str) -> None:
    """Every ``from raserec_adapter... / examples... import name`` must resolve."""
    for node in ast.walk(ast.parse(code, where)):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] not in ("raserec_adapter", "examples"):
                continue
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name), f"{where}: {node.module} has no {alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in ("raserec_adapter", "examples"):
                    importlib.import_module(alias.name)


def load_hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "hooks.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_docs_pages_exist_and_are_in_the_nav() -> None:
    nav = set(re.findall(r":\s*([\w-]+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(), re.M))
    names = {p.name for p in PAGES}
    assert {"index.md", "custom-encoder.md", "api.md", "results.md"} <= names
    assert names == nav, f"pages not in the nav: {names - nav}; nav without page: {nav - names}"


@pytest.mark.parametrize(
    "page",
    [p for p in PAGES if any(not is_no_run(c) for _, c in python_blocks(p))],
    ids=lambda p: p.name,
)
def test_docs_code_runs(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": f"docs_{page.stem}"}
    for line, code in python_blocks(page):
        where = f"{page.relative_to(ROOT)}:{line}"
        compiled = compile(code, where, "exec")
        if is_no_run(code):
            continue
        exec(compiled, namespace)


@pytest.mark.parametrize("page", [*PAGES, ROOT / "README.md"], ids=lambda p: p.name)
def test_docs_code_compiles_and_imports_resolve(page: Path) -> None:
    blocks = python_blocks(page)
    for line, code in blocks:
        where = f"{page.relative_to(ROOT)}:{line}"
        if page.name == "README.md" or is_no_run(code):
            check_imports(code, where)
        else:
            compile(code, where, "exec")


def test_readme_has_a_usage_block() -> None:
    assert python_blocks(ROOT / "README.md"), "README.md lost its ```python usage block"


def test_api_reference_covers_all_public_names() -> None:
    import raserec_adapter

    text = load_hooks().render_api()
    for name in raserec_adapter.__all__:
        assert f"{{ #{name} }}" in text, f"{name} missing from the API reference"
    assert "**Args**" in text and "```pycon" in text


def test_docstring_conversion() -> None:
    hooks = load_hooks()
    ctx = hooks.DocContext({"wrap_encoder"}, page="api.md")
    doc = """Does a thing with ``x < y`` and a*b*c.

    Args:
        x (int): First; see :func:`~raserec_adapter.wrap_encoder`.
            Continued here.
        y: Second.

    Raises:
        ValueError: When bad.

    Example:
        >>> 1 + 1  # doctest: +SKIP
        2
    """
    md = hooks.docstring_markdown(doc, ctx)
    assert "`x < y`" in md and r"a\*b\*c" in md
    assert "- `x` (int): First; see [`wrap_encoder`](api.md#wrap_encoder). Continued here." in md
    assert "- `ValueError`: When bad." in md
    assert "```pycon\n>>> 1 + 1\n2\n```" in md


def _write(path: Path, record: dict) -> None:
    path.write_text(json.dumps(record))


def test_results_rendering(tmp_path: Path) -> None:
    hooks = load_hooks()
    assert "No results yet" in hooks.render_results(tmp_path)
    results = tmp_path / "benchmarks" / "results"
    results.mkdir(parents=True)
    provenance = {
        "command": "python examples/sasrec.py --dataset beauty",
        "git_commit": "abc123",
        "machine": {"cpu": "Test CPU", "cpu_cores": 2, "torch": "2.x"},
        "wall_seconds": 12.5,
    }
    for variant, hr in (("raserec", 0.06), ("pretrained-plain", 0.05)):
        _write(
            results / f"beauty-sasrec-{variant}.json",
            {
                "dataset": "beauty",
                "backbone": "sasrec",
                "variant": variant,
                "protocol": "full",
                "split": "test",
                "seeds": [0, 1],
                "per_seed": [
                    {"HR@10": hr - 0.01, "NDCG@10": 0.03},
                    {"HR@10": hr + 0.01, "NDCG@10": 0.03},
                ],
                "mean": {"HR@10": hr, "NDCG@10": 0.03},
                **provenance,
            },
        )
    merged = json.loads((results / "beauty-sasrec-raserec.json").read_text())
    merged["runs"] = [
        {"command": "python run0", "git_commit": "c0", "machine": {"cpu": "CPU A"}, "seeds": [0]}
    ]
    merged["model_note"] = "an older model"
    _write(results / "beauty-sasrec-raserec.json", merged)
    _write(
        results / "speed-sasrec.json",
        {"benchmark": "speed", "epoch_seconds": [1.5, 2.0], **provenance},
    )
    md = hooks.render_results(tmp_path)
    rows = [x for x in md.splitlines() if x.startswith("| beauty")]
    assert len(rows) == 2 and "pretrained-plain" in rows[0] and "raserec" in rows[1]
    assert (
        "0.0600<br><small>± 0.0141</small>" in rows[1] and "(#run-beauty-sasrec-raserec)" in rows[1]
    )
    assert "<svg" in md and "0.0600</text>" in md
    assert "`python examples/sasrec.py --dataset beauty`" in md and "`abc123`" in md
    assert "Test CPU (2 cores)" in md
    assert "- run of seed 0: `python run0` at `c0`; CPU A; None s" in md
    assert "- merged on: Test CPU" in md and "- model note: an older model" in md
    assert "## Other benchmark files" in md and "| `epoch_seconds` | 1.5, 2 |" in md


def test_a_ram_sweep_renders_as_a_table(tmp_path: Path) -> None:
    hooks = load_hooks()
    results = tmp_path / "benchmarks" / "results"
    results.mkdir(parents=True)
    m = ("HR@5", "NDCG@5", "HR@10", "NDCG@10")
    base, alt = {"alpha": 0.5, "beta": 1.0, "k": 20}, {"alpha": 0.9, "beta": 1.0, "k": 20}
    _write(
        results / "sensitivity-beauty-bert4rec.json",
        {
            "what": "RAM sweep",
            "plain": {"valid": dict.fromkeys(m, 0.05), "test": dict.fromkeys(m, 0.04)},
            "settings": [
                {"setting": base, "valid": dict.fromkeys(m, 0.07), "test": dict.fromkeys(m, 0.02)},
                {"setting": alt, "valid": dict.fromkeys(m, 0.06), "test": dict.fromkeys(m, 0.03)},
            ],
            "selected_by_valid": {"metric": "valid HR@10", "setting": base},
            "command": "python benchmarks/sensitivity.py --summarise a.json b.json",
        },
    )
    md = hooks.render_results(tmp_path)
    assert "| setting | valid HR@10 | test HR@5 | test NDCG@5 | test HR@10 | test NDCG@10 |" in md
    assert "| frozen encoder, no RAM | 0.0500 | 0.0400 | 0.0400 | 0.0400 | 0.0400 |" in md
    selected = "| **alpha 0.5, beta 1.0, k 20** (selected) | 0.0700 | 0.0200 |"
    assert selected in md
    assert "| alpha 0.9, beta 1.0, k 20 | 0.0600 | 0.0300 |" in md
    assert "`plain." not in md  # the table shows them; no flat field rows repeat them


def test_faiss_bench_runs(tmp_path: Path) -> None:
    pytest.importorskip("faiss")
    spec = importlib.util.spec_from_file_location("faiss_bench", DOCS / "faiss_bench.py")
    assert spec and spec.loader
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "f.json"
    bench.main(
        ["--n", "2000", "--queries", "20", "--indexes", "Flat", "IVF128,Flat", "--out", str(out)]
    )
    rec = json.loads(out.read_text())
    assert [r["index"] for r in rec["rows"]] == ["Flat", "IVF128,Flat"]
    assert rec["rows"][0]["recall_at_20"] == 1.0


def test_site_builds_strictly(tmp_path: Path) -> None:
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None:
        pytest.skip("mkdocs / mkdocs-material not installed")
    site = tmp_path / "site"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", str(site)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    api = (site / "api" / "index.html").read_text(encoding="utf-8")
    assert 'id="RetrievalAugmenter"' in api and 'id="wrap_encoder"' in api
    assert (site / "results" / "index.html").is_file()
    assert "<svg" in (site / "index.html").read_text(encoding="utf-8")
    assert not list(site.rglob("*.py")), "Python files of docs/ were copied into the site"


RESULTS = ROOT / "benchmarks" / "results"
RESULTS_NAME_RE = re.compile(r"`([A-Za-z0-9][A-Za-z0-9_.*]*-[A-Za-z0-9_.*-]*\.json)`")


@pytest.mark.parametrize("page", [*PAGES, ROOT / "README.md"], ids=lambda p: p.name)
def test_results_files_named_in_the_docs_exist(page: Path) -> None:
    """A results file (or ``*`` pattern) cited in backticks must be in benchmarks/results."""
    text = page.read_text(encoding="utf-8")
    missing = [n for n in RESULTS_NAME_RE.findall(text) if not list(RESULTS.glob(n))]
    assert not missing, f"{page.name} cites results files that do not exist: {missing}"


@pytest.mark.parametrize(
    ("page", "least"),
    [(ROOT / "README.md", 4), (DOCS / "reproduction.md", 2)],
    ids=["README", "notes"],
)
def test_results_tables_match_the_results_files(page: Path, least: int) -> None:
    """Each table row that names a results file shows that file's means (4 places)."""
    metrics = ("HR@5", "NDCG@5", "HR@10", "NDCG@10")
    header_cells: list[str] = []
    checked = 0
    for line in page.read_text(encoding="utf-8").splitlines():
        if not line.startswith("|"):
            continue
        cells = [c.strip().strip("*") for c in line.strip().strip("|").split("|")]
        if "HR@5" in cells:
            header_cells = cells
            continue
        names = [c.strip("`") for c in cells if c.startswith("`") and c.endswith(".json`")]
        if not names or not header_cells:
            continue
        record = json.loads((RESULTS / names[0]).read_text(encoding="utf-8"))
        for metric in metrics:
            shown = cells[header_cells.index(metric)]
            assert shown == f"{record['mean'][metric]:.4f}", (
                f"{page.name} row {cells[0]!r}: {metric} shows {shown}, {names[0]} has "
                f"{record['mean'][metric]:.5f}"
            )
        checked += 1
    assert checked >= least, f"{page.name} lost its results table"


def test_group_tables_in_the_notes_match_the_groups_files() -> None:
    """The NDCG@5 changes per group in reproduction.md are those of groups-beauty-*.json."""
    grouping = None
    checked = 0
    for line in (DOCS / "reproduction.md").read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| target popularity group"):
            grouping = "popularity"
        elif line.startswith("| user length group"):
            grouping = "length"
        elif not line.startswith("|"):
            grouping = None
        elif grouping and cells[0].split(",")[0] in ("SASRec", "GRU4Rec", "BERT4Rec"):
            backbone = cells[0].split(",")[0].lower()
            record = json.loads((RESULTS / f"groups-beauty-{backbone}.json").read_text())
            want = [r["change_percent"]["NDCG@5"] for r in record["groupings"][grouping]]
            assert [float(c.rstrip("%")) for c in cells[1:]] == want, (grouping, backbone)
            checked += 1
    assert checked == 6


def test_sweep_tables_in_the_notes_match_the_sweep_files() -> None:
    """A table after ``<!-- KIND: FILE -->`` in reproduction.md is the file's rendered table
    (KIND: ``sweep``, ``partitions`` or ``robustness``, as the results page renders them)."""
    hooks = load_hooks()
    render = {
        "sweep": hooks.sweep_table,
        "partitions": hooks.partitions_table,
        "robustness": hooks.robustness_table,
    }
    lines = (DOCS / "reproduction.md").read_text(encoding="utf-8").splitlines()
    checked = 0
    for i, line in enumerate(lines):
        kind, sep, rest = line.removeprefix("<!-- ").partition(": ")
        if line.startswith("<!-- ") and sep and kind in render:
            name = rest.removesuffix(" -->").strip()
            want = render[kind](json.loads((RESULTS / name).read_text()))
            assert want, name
            assert lines[i + 1 : i + len(want)] == want[:-1], name  # want ends with ""
            checked += 1
    assert checked >= 1
