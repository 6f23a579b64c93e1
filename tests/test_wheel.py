"""The built wheel, installed into a fresh virtual environment, runs the README's usage block.

What a user gets from ``pip install``: the wheel is built from a copy of the package sources,
installed with its declared dependencies (the pinned development versions) into a new virtual
environment, and the README's usage block runs from an empty directory on a tiny schedule and
a tiny dataset file, with nothing of the checkout importable.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

# README text -> what the tiny run uses instead (each must be in the block, else the test says so)
TINY = {
    'load_dataset("beauty")': "load_dataset(DATA)",
    "augmenter.pretrain(split)": "augmenter.pretrain(split, PretrainConfig(epochs=1))",
    "augmenter.fit_raft(split)": "augmenter.fit_raft(split, RAFTConfig(epochs=1))",
}


def readme_usage_block() -> str:
    """The first ``python`` code block after the README's ``## Usage`` heading."""
    text = (ROOT / "README.md").read_text()
    usage = text[text.index("## Usage") :]
    match = re.search(r"```python\n(.*?)```", usage, re.S)
    assert match, "README.md has no python block under '## Usage'"
    return match.group(1)


def tiny_script(data: Path) -> str:
    block = readme_usage_block()
    for old, new in TINY.items():
        assert old in block, f"the README usage block no longer contains {old!r}; update TINY"
        block = block.replace(old, new)
    return (
        "from raserec_adapter import PretrainConfig, RAFTConfig\n"
        f"DATA = {str(data)!r}\n"
        + block
        + "\nimport raserec_adapter, raserec_adapter.models\n"
        + "print('PACKAGE', raserec_adapter.__file__)\n"
        + "import importlib.util\n"
        + "print('EXAMPLES', importlib.util.find_spec('examples'))\n"
        + "print('TOP', ids.tolist())\n"
    )


def write_tiny_dataset(path: Path, users: int = 80, items: int = 320) -> Path:
    """``user item item ...`` lines: users walk a ring of ``items`` items, every item seen."""
    rng = np.random.default_rng(0)
    lines = []
    for u in range(users):
        start = (u * items // users) % items + 1  # 5+ items each from every 4th: all covered
        seq = [(start + k - 1) % items + 1 for k in range(int(rng.integers(5, 12)))]
        lines.append(" ".join(map(str, [u + 1, *seq])))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_the_wheel_installs_and_runs_the_readme_usage_from_an_empty_directory(tmp_path: Path):
    src = tmp_path / "src"  # a copy: no stale build/ of the checkout can reach the wheel
    src.mkdir()
    shutil.copytree(
        ROOT / "raserec_adapter",
        src / "raserec_adapter",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    dist = tmp_path / "dist"
    build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    subprocess.run([*build, "-w", str(dist), str(src)], check=True, cwd=tmp_path)
    (wheel,) = dist.glob("raserec_adapter-*.whl")

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    pins = ["-c", str(ROOT / "constraints-dev.txt")]
    subprocess.run([python, "-m", "pip", "install", "-q", *pins, str(wheel)], check=True)

    work = tmp_path / "empty"
    work.mkdir()
    data = write_tiny_dataset(tmp_path / "tiny.txt")
    script = work / "usage.py"
    script.write_text(tiny_script(data))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RASEREC_DATA_DIR")}
    env["OMP_NUM_THREADS"] = "1"
    out = subprocess.run(
        [python, script.name], cwd=work, env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    printed = out.stdout
    package = re.search(r"PACKAGE (.*)", printed).group(1)
    assert Path(package).is_relative_to(env_dir), f"imported from {package}, not the venv"
    assert "EXAMPLES None" in printed  # nothing of the checkout is importable
    assert "'plain'" in printed and "'raserec'" in printed  # evaluate's two variants
    top = eval(re.search(r"TOP (.*)", printed).group(1))
    assert len(top) == 1 and len(top[0]) == 10 and all(1 <= i <= 320 for i in top[0])
    assert (work / "runs" / "beauty" / "config.json").is_file()  # augmenter.save wrote there
