"""The documentation cannot rot: its code runs, its names exist, its figures are the results
files', every results file is cited, and the site builds strictly.

Every fenced ```python block in ``docs/*.md`` runs, page by page in one namespace per page, in a
temporary working directory. A block whose first line starts with ``# docs: no-run`` (it needs
real data, a GPU or long training) is compiled instead, and every name it imports from
``raserec_adapter`` must exist. README.md's usage block trains on the real Beauty dataset, so it
gets the compile-and-import check only.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
RESULTS = ROOT / "benchmarks" / "results"
NO_RUN = "# docs: no-run"
FENCE_RE = re.compile(
    r"^(?P<indent>[ \t]*)```python[^\n]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.M | re.S
)
PAGES = sorted(DOCS.glob("*.md"))
MAX_RESULTS_FILES = 52  # the paper's Table 2 needs 8 (two datasets, two variants, two protocols)
# a results file cited in backticks: `name.json`, or a pattern such as `beauty-*-raserec.json`
RESULTS_NAME_RE = re.compile(r"`(?:benchmarks/results/)?([A-Za-z0-9][\w.*-]*-[\w.*-]*\.json)`")
METRICS = ("HR@5", "NDCG@5", "HR@10", "NDCG@10")


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


def imported_modules(code: str, where: str) -> list[tuple[str, list[str]]]:
    """``(module, names)`` of every import statement in ``code``."""
    out: list[tuple[str, list[str]]] = []
    for node in ast.walk(ast.parse(code, where)):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
    return out


def check_imports(code: str, where: str) -> None:
    """Every ``from raserec_adapter... import name`` resolves; nothing imports ``examples``."""
    for module, names in imported_modules(code, where):
        top = module.split(".")[0]
        assert top != "examples", f"{where} imports {module}: the wheel has no examples package"
        if top == "raserec_adapter":
            imported = importlib.import_module(module)
            for name in names:
                assert hasattr(imported, name), f"{where}: {module} has no {name}"


def load_hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "hooks.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cited_text() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in [README, *PAGES])


# ------------------------------------------------------------------------------ pages and code
def test_docs_pages_exist_and_are_in_the_nav() -> None:
    mkdocs_yml = (ROOT / "mkdocs.yml").read_text()
    nav = set(re.findall(r":\s*([\w-]+\.md)\s*$", mkdocs_yml, re.M))
    names = {p.name for p in PAGES}
    assert {"index.md", "custom-encoder.md", "api.md", "results.md", "reproduction.md"} <= names
    assert names == nav, f"pages not in the nav: {names - nav}; nav without page: {nav - names}"
    assert re.search(r"^plugins:\n(  - .*\n)*  - mkdocstrings:", mkdocs_yml, re.M), mkdocs_yml


def test_api_page_is_generated_by_mkdocstrings() -> None:
    directives = re.findall(r"^::: ([\w.]+)$", (DOCS / "api.md").read_text(), re.M)
    assert directives[0] == "raserec_adapter"
    for module in directives:
        importlib.import_module(module)
    assert {"raserec_adapter.models", "raserec_adapter.data", "raserec_adapter.memory"} <= set(
        directives
    )


@pytest.mark.parametrize(
    "page",
    [p for p in PAGES if any(not is_no_run(c) for _, c in python_blocks(p))],
    ids=lambda p: p.name,
)
def test_docs_code_runs(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": f"docs_{page.stem}"}
    for line, code in python_blocks(page):
        compiled = compile(code, f"{page.relative_to(ROOT)}:{line}", "exec")
        if not is_no_run(code):
            exec(compiled, namespace)


@pytest.mark.parametrize("page", [*PAGES, README], ids=lambda p: p.name)
def test_docs_code_compiles_and_imports_resolve(page: Path) -> None:
    for line, code in python_blocks(page):
        check_imports(code, f"{page.relative_to(ROOT)}:{line}")


def test_readme_usage_block_uses_the_shipped_models() -> None:
    blocks = [code for _, code in python_blocks(README)]
    usage = [c for c in blocks if "RetrievalAugmenter(encoder" in c]
    assert len(usage) == 1, "README.md lost its usage block"
    assert "from raserec_adapter.models import SASRec" in usage[0]
    for step in ("pretrain(split)", "build_bank(split)", "fit_raft(split)", "recommend("):
        assert step in usage[0], step
    readme = README.read_text(encoding="utf-8")
    assert "bash scripts/demo.sh" in readme and "bash scripts/test.sh" in readme
    assert "pip install raserec-adapter" in readme


def test_no_docs_page_hook_or_test_imports_examples() -> None:
    sources = [*(ROOT / "tests").glob("*.py"), *DOCS.glob("*.py")]
    for path in sources:
        check_imports(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
    for page in [*PAGES, README]:
        for line, code in python_blocks(page):
            check_imports(code, f"{page.name}:{line}")


def test_readme_has_no_internal_wording() -> None:
    text = README.read_text(encoding="utf-8")
    for word in ("SPEC", "pre-registered", "recorded seeds", "probe"):
        assert word not in text, word


def test_pages_stay_small() -> None:
    assert len((DOCS / "hooks.py").read_text().splitlines()) <= 250
    assert len((DOCS / "reproduction.md").read_text().splitlines()) <= 300
    tables = _tables(README)
    results = [rows for head, rows in tables if "HR@5" in head]
    speed = [rows for head, rows in tables if "baseline in the same run" in head]
    assert len(results) == 1 and len(results[0]) <= 10, results
    assert len(speed) == 1 and len(speed[0]) <= 6, speed


# ------------------------------------------------------------------------------ results files
def _tables(path: Path) -> list[tuple[list[str], list[list[str]]]]:
    """``(header cells, row cells)`` of each Markdown table of a page."""
    out: list[tuple[list[str], list[list[str]]]] = []
    in_table = False
    for line in path.read_text(encoding="utf-8").splitlines():
        cells = [c.strip().strip("*") for c in line.strip().strip("|").split("|")]
        if not line.startswith("|"):
            in_table = False
        elif not in_table:
            out.append((cells, []))
            in_table = True
        elif not set(line) <= set("|-: "):
            out[-1][1].append(cells)
    return out


def test_every_results_file_is_cited_and_there_are_few() -> None:
    files = sorted(p.name for p in RESULTS.glob("*.json"))
    assert files, "benchmarks/results/ is empty"
    most = MAX_RESULTS_FILES
    assert len(files) <= most, f"{len(files)} results files, at most {most}"
    text = cited_text()
    uncited = [name for name in files if f"`{name}`" not in text and f"/{name}`" not in text]
    assert not uncited, f"results files cited in neither README.md nor docs/*.md: {uncited}"
    assert not [p for p in RESULTS.iterdir() if p.suffix != ".json"], "only JSON files there"


def test_every_results_file_has_a_command_in_the_benchmarks_index() -> None:
    index = (ROOT / "benchmarks" / "README.md").read_text(encoding="utf-8")
    patterns = RESULTS_NAME_RE.findall(index)
    orphans = [p.name for p in RESULTS.glob("*.json") if not any(p.match(x) for x in patterns)]
    assert not orphans, f"benchmarks/README.md says nowhere how to make {orphans}"


@pytest.mark.parametrize(
    "page", [*PAGES, README, ROOT / "benchmarks" / "README.md"], ids=lambda p: p.name
)
def test_results_files_named_in_the_docs_exist(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    missing = [n for n in RESULTS_NAME_RE.findall(text) if not list(RESULTS.glob(n))]
    assert not missing, f"{page.name} cites results files that do not exist: {missing}"


@pytest.mark.parametrize(
    ("page", "least"), [(README, 6), (DOCS / "reproduction.md", 12)], ids=["README", "repro"]
)
def test_results_tables_match_the_results_files(page: Path, least: int) -> None:
    """Each table row that names a results file shows that file's means (4 places)."""
    checked = 0
    for head, rows in _tables(page):
        if "HR@5" not in head:
            continue
        for cells in rows:
            names = [c.strip("`") for c in cells if c.startswith("`") and c.endswith(".json`")]
            if not names:
                continue
            mean = json.loads((RESULTS / names[0]).read_text(encoding="utf-8"))["mean"]
            for metric in METRICS:
                shown = cells[head.index(metric)]
                assert shown == f"{mean[metric]:.4f}", (page.name, cells[0], metric, shown)
            checked += 1
    assert checked >= least, f"{page.name}: {checked} rows checked against results files"


# ------------------------------------------------------------------------------ hooks
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
        per_seed = [{"HR@10": hr - 0.01, "NDCG@10": 0.03}, {"HR@10": hr + 0.01, "NDCG@10": 0.03}]
        record = {"dataset": "beauty", "backbone": "sasrec", "variant": variant}
        record |= {"protocol": "full", "split": "test", "seeds": [0, 1], "per_seed": per_seed}
        _write(
            results / f"beauty-sasrec-{variant}.json",
            {**record, "mean": {"HR@10": hr, "NDCG@10": 0.03}, **provenance},
        )
    merged = json.loads((results / "beauty-sasrec-raserec.json").read_text())
    merged["runs"] = [
        {"command": "python run0", "git_commit": "c0", "machine": {"cpu": "CPU A"}, "seeds": [0]}
    ]
    merged["model_note"] = "an older model"
    from raserec_adapter.evaluation.lift import lift_record

    merged["lift"] = lift_record([1, 3, 12, 40], [1, 2, 12, 3], ks=(10,), resamples=50)
    _write(results / "beauty-sasrec-raserec.json", merged)
    _write(results / "speed-sasrec.json", {"epoch_seconds": [1.5, 2.0], **provenance})
    md = hooks.render_results(tmp_path)
    rows = [x for x in md.splitlines() if x.startswith("| beauty")]
    assert len(rows) == 2 and "pretrained-plain" in rows[0] and "raserec" in rows[1]
    assert "0.0600<br><small>± 0.0141</small>" in rows[1]
    assert "(#run-beauty-sasrec-raserec)" in rows[1]
    assert "<svg" in md and "0.0600</text>" in md
    assert "`python examples/sasrec.py --dataset beauty`" in md and "`abc123`" in md
    assert "- machine: Test CPU (2 cores), torch 2.x" in md and "- wall time (s): 12.5" in md
    assert "- run of seed 0: `python run0` at `c0`; CPU A; None s" in md
    assert "- merged on: Test CPU" in md and "- model note: an older model" in md
    assert "| 1 |  |  | 0.0700 | 0.0300 |" in md  # seed 1's row of the per-seed table
    lift = merged["lift"]["metrics"]["HR@10"]  # 0.5 -> 0.75 with the RAM
    assert "Lift with the RAM (95%): paired bootstrap over test users" in md
    row = f"| HR@10 | 0.5000 | 0.7500 | 0.2500 | {lift['low']:.4f} | {lift['high']:.4f} |"
    assert row in md
    assert "## Analyses and speed" in md and "| `epoch_seconds` | 1.5, 2 |" in md
    assert "`command`" not in md  # provenance is listed once, not again as a field


def test_a_ram_sweep_renders_as_a_table(tmp_path: Path) -> None:
    hooks = load_hooks()
    results = tmp_path / "benchmarks" / "results"
    results.mkdir(parents=True)
    m = METRICS
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
        },
    )
    md = hooks.render_results(tmp_path)
    assert "| setting | valid.HR@10 | test.HR@5 | test.NDCG@5 | test.HR@10 | test.NDCG@10 |" in md
    assert "| frozen encoder, no RAM | 0.0500 | 0.0400 | 0.0400 | 0.0400 | 0.0400 |" in md
    assert "| alpha 0.5, beta 1.0, k 20 | 0.0700 | 0.0200 |" in md
    assert "| alpha 0.9, beta 1.0, k 20 | 0.0600 | 0.0300 |" in md
    assert "| `what` | RAM sweep |" in md
    assert "`plain." not in md  # the table shows them; no field rows repeat them


@pytest.mark.parametrize(
    ("name", "field", "label", "columns"),
    [
        ("partitions-beauty-sasrec.json", "summary", "combo", ("test.HR@5", "test.NDCG@10")),
        ("robustness-beauty-gru4rec.json", "ratios", "ratio", ("plain.HR@5", "raserec.HR@5")),
        ("groups-beauty-sasrec.json", "groupings.length", "group", ("raserec.NDCG@5",)),
        ("sensitivity-beauty-sasrec-seed0.json", "settings", "setting", ("valid.HR@10",)),
    ],
)
def test_the_paper_figures_render_from_their_files(name, field, label, columns) -> None:
    """Each analysis table on the results page shows its file's rows, 4 decimals."""
    hooks = load_hooks()
    rec = json.loads((RESULTS / name).read_text())
    lines = hooks.analysis_tables(rec)
    at = lines.index(f"`{field}`:") + 2  # the table's header line
    names = [c.strip() for c in lines[at].strip("|").split("|")]
    table_rows = []
    for line in lines[at + 2 :]:
        if not line:
            break
        table_rows.append([c.strip() for c in line.strip("|").split("|")])
    file_rows = hooks._get(rec, field)
    assert len(table_rows) - len(file_rows) in (0, 1)  # plus the frozen encoder's row
    for row, source in zip(table_rows[len(table_rows) - len(file_rows) :], file_rows, strict=True):
        assert row[names.index(label)] == hooks._value(source[label])
        for column in columns:
            assert row[names.index(column)] == f"{hooks._get(source, column):.4f}", column


def test_an_unknown_marker_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    hooks = load_hooks()
    page = SimpleNamespace(file=SimpleNamespace(src_path="x.md"))
    with caplog.at_level(logging.WARNING):
        out = hooks.on_page_markdown("a\n<!-- gen:nothing -->\n", page, None, None)
    assert "<!-- gen:nothing -->" in out and "unknown marker 'gen:nothing'" in caplog.text
    text = hooks.on_page_markdown(
        "```python\n# docs: no-run  (needs data)\nx = 1\n```\n", page, 0, 0
    )
    assert text == "```python\n# needs data\nx = 1\n```\n"


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


# ------------------------------------------------------------------------------ the site
def test_site_builds_strictly(tmp_path: Path) -> None:
    for package in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python"):
        if importlib.util.find_spec(package.split(".")[0]) is None:
            pytest.skip(f"{package} not installed (the [docs] extra)")
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
    for name in ("raserec_adapter.RetrievalAugmenter", "raserec_adapter.wrap_encoder"):
        assert f'id="{name}"' in api, name
    assert re.search(r'id="raserec_adapter\.models\.(SASRec|sasrec\.SASRec)"', api)
    assert "<blockquote>" not in api, "a docstring example rendered as a quote: use 'Examples:'"
    results = (site / "results" / "index.html").read_text(encoding="utf-8")
    assert "<svg" in results and "beauty-sasrec-raserec" in results
    assert "<svg" in (site / "index.html").read_text(encoding="utf-8")
    assert not list(site.rglob("*.py")), "Python files of docs/ were copied into the site"
