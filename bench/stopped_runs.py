"""What `Store.stopped_runs` (the autoscaler's `World.ran`, read every pass) costs next to the
`Store.pending()` the same pass already reads (the baseline, same store, same run).

    .venv/bin/python bench/stopped_runs.py [--pending 10000] [--requeued 500] [--old 200000]

A real SQLite store in a temp dir: `--pending` PENDING tasks, of which `--requeued` were placed
before (one ended attempt each, two ranks), beside `--old` allocations of other, finished work.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hybridctl.core.model import JobSpec  # noqa: E402
from hybridctl.store.sqlite import Store, Submitter  # noqa: E402

T = 1_700_000_000.0


def timed(fn, reps: int) -> float:  # type: ignore[no-untyped-def]
    fn()  # warm the page cache
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pending", type=int, default=10000)
    ap.add_argument("--requeued", type=int, default=500)
    ap.add_argument("--old", type=int, default=200000)
    ap.add_argument("--reps", type=int, default=20)
    a = ap.parse_args()
    d = Path(tempfile.mkdtemp(prefix="stopped_runs"))
    try:
        store = Store(d / "hybridctl.db")
        who = Submitter(1000, "alice", 1000, "lab")
        for _ in range(a.pending):
            store.submit(JobSpec(run="x"), who, T)
        ins = ("INSERT INTO allocations (job_id, task, attempt, rank, node, gpus, cpus, memory_mb, user, grp,"
               " start, end) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)")
        with store.tx() as c:
            c.executemany(ins, [(j, 0, 0, r, f"n{r}", "[0]", 1, 0, "alice", "lab", T + r, T + 60 * j)
                                for j in range(1, a.requeued + 1) for r in (0, 1)])
            c.execute("UPDATE tasks SET attempt=1 WHERE job_id <= ?", (a.requeued,))
            c.executemany(ins, [(10**7 + j, 0, 0, 0, "n0", "[0]", 1, 0, "alice", "lab", T, T + 5)
                                for j in range(a.old)])
        got = store.stopped_runs()
        assert len(got) == a.requeued, len(got)
        ours = timed(store.stopped_runs, a.reps)
        base = timed(store.pending, a.reps)
        print(f"{a.pending} pending tasks, {a.requeued} placed before, {a.old} other allocations")
        print(f"Store.pending()       {base * 1000:8.2f} ms  (baseline: read every pass already)")
        print(f"Store.stopped_runs()  {ours * 1000:8.2f} ms  = {ours / base:.3f} x the baseline")
        store.close()
    finally:
        shutil.rmtree(d)
    return 0


if __name__ == "__main__":
    sys.exit(main())
