"""Prints how far two ``torchrun`` processes are from one process (``docs/distributed.md``).

``python tests/data/ddp_compare.py`` launches ``tests/data/ddp_worker.py`` with
``--nproc_per_node 2`` (gloo, one thread each), runs its pipeline in this process with the same
global batches, and prints the largest differences that ``tests/test_distributed.py`` bounds.
Importing it runs nothing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import torch

HERE = Path(__file__).resolve().parent


def _worker() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ddp_worker", HERE / "ddp_worker.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _largest(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[n].float() - b[n].float()).abs().max()) for n in a)


def main() -> None:
    worker = _worker()
    tmp = Path(tempfile.mkdtemp())
    data = tmp / "tiny.txt"
    worker.write_data(worker.tiny_split(), data)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
         str(HERE / "ddp_worker.py"), str(tmp / "ddp"), str(tmp / "reports"), str(data)],
        check=True, capture_output=True, env=env,
    )  # fmt: skip
    print(f"torchrun launch: {time.perf_counter() - t0:.1f} s")
    torch.set_num_threads(1)
    one = worker.pipeline(tmp / "one")
    want = one["tensors"]
    for rank in (0, 1):
        got = torch.load(tmp / "reports" / f"rank{rank}.pt", weights_only=True)
        meta = json.loads(got.pop("meta"))
        for case in worker.CASES:
            a, b = want[f"{case}.gradients"]["g"], got[f"{case}.gradients"]["g"]
            rel = float(((a - b).abs().amax(1) / a.abs().amax(1)).max())
            print(f"rank {rank} {case}: {len(a)} steps, gradient difference {rel:.1e} of max")
        for bank in ("bank.sasrec", "bank.gru4rec"):
            same = all(torch.equal(want[bank][p], got[bank][p]) for p in ("keys", "values"))
            print(f"rank {rank} {bank}: identical {same}")
        c, g = one["cases"]["windows"], meta["cases"]["windows"]
        losses = max(
            abs(x[k] - y[k])
            for x, y in zip(c["history"], g["history"], strict=True)
            for k in ("loss_rec", "loss_ret")
        )
        print(
            f"rank {rank} stage 1: epochs {g['epochs_run']} (one process {c['epochs_run']}), "
            f"best {g['best_epoch']} ({c['best_epoch']}), losses within {losses:.1e}, "
            f"valid representations within "
            f"{_largest(want['windows.valid_h'], got['windows.valid_h']):.1e}"
        )
        print(
            f"rank {rank} RAFT: epochs {g['raft']['epochs_run']} ({c['raft']['epochs_run']}), "
            f"RAM weights within {_largest(want['ram'], got['ram']):.1e}"
        )
        for variant in c["test"]:
            print(
                f"rank {rank} test NDCG@10 {variant}: {g['test'][variant]['NDCG@10']:.4f} "
                f"(one process {c['test'][variant]['NDCG@10']:.4f})"
            )


if __name__ == "__main__":
    main()
