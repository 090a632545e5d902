"""Attacks on the agent's reading of a job's metrics file (`<jobs>/<key>/metrics.jsonl`), which the
job's user writes and a root agent reads: a link, a FIFO, a huge file, garbage, deep JSON and a
flood of names must neither be followed, block, be read unbounded, nor crash the sampler."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from hybridctl_agent.jobusage import MAX_NAMES, MAX_READ, METRICS_FILE, JobUsage

KEY = "7.a0.r0"


def usage(tmp_path: Path) -> tuple[JobUsage, Path]:
    (tmp_path / KEY).mkdir()
    return JobUsage(str(tmp_path)), tmp_path / KEY / METRICS_FILE


def sample(u: JobUsage, t: float = 1.0) -> dict:
    return u.sample([{"key": KEY, "pid": None}], t)[KEY]


def test_a_link_to_a_secret_is_not_followed(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text(json.dumps({"t": 1, "v": {"root_secret": 42}}) + "\n")
    u, path = usage(tmp_path)
    path.symlink_to(secret)
    assert "metrics" not in sample(u)


def test_a_fifo_in_place_of_the_file_never_blocks_the_sampler(tmp_path: Path) -> None:
    u, path = usage(tmp_path)
    os.mkfifo(path)
    done = threading.Event()
    out: dict = {}

    def run() -> None:
        out.update(sample(u))
        done.set()

    threading.Thread(target=run, daemon=True).start()
    assert done.wait(10), "the sampler blocked on a FIFO"
    assert "metrics" not in out


def test_a_huge_sparse_file_is_read_in_bounded_steps(tmp_path: Path) -> None:
    u, path = usage(tmp_path)
    with open(path, "wb") as fh:
        fh.truncate(10 * 1024 ** 3)  # 10 GiB of holes, no newline
    sample(u)
    assert u.state[KEY].offset == MAX_READ  # one bounded read per sample, skipped, never stalled


def test_garbage_and_hostile_values_are_dropped_and_the_rest_kept(tmp_path: Path) -> None:
    u, path = usage(tmp_path)
    lines = [b"\xff\xfe not json", b"[1,2,3]", b'{"v": "x"}', b'{"v": {"a b": 1, "ok": 1e308, "n": "NaN"}}',
             b'{"t": "soon", "v": {"-bad": 1, "x" : true, "loss": 0.5}}', b'{"t": 1e999, "v": {"inf": 1e999}}']
    path.write_bytes(b"\n".join(lines) + b"\n")
    assert sample(u)["metrics"] == {"ok": 1e308, "loss": 0.5}


def test_deeply_nested_json_does_not_crash_the_sampler(tmp_path: Path) -> None:
    """json.loads raises RecursionError (not ValueError) on deep nesting: one line a job writes
    must not take down the agent's telemetry."""
    u, path = usage(tmp_path)
    path.write_bytes(b"[" * 100_000 + b"\n" + b'{"v": {"loss": 2.0}}\n')
    assert sample(u)["metrics"] == {"loss": 2.0}


def test_a_million_distinct_names_keep_at_most_max_names(tmp_path: Path) -> None:
    u, path = usage(tmp_path)
    with open(path, "wb") as fh:
        for i in range(0, 200_000, 1000):
            fh.write(json.dumps({"t": 1, "v": {f"m{j}": j for j in range(i, i + 1000)}}).encode() + b"\n")
    for step in range(200):
        e = sample(u, float(step))
        if u.state[KEY].offset >= path.stat().st_size:
            break
    assert u.state[KEY].offset == path.stat().st_size
    assert len(e["metrics"]) == MAX_NAMES


def test_a_fifo_in_place_of_spec_json_never_blocks_the_sampler(tmp_path: Path) -> None:
    """Under a rootless agent the job's user can replace spec.json in its job directory: a FIFO
    there must not hang the agent's telemetry (a plain open() blocks until a writer comes)."""
    u, _ = usage(tmp_path)
    os.mkfifo(tmp_path / KEY / "spec.json")
    done = threading.Event()
    out: dict = {}

    def run() -> None:
        out.update(sample(u))
        done.set()

    threading.Thread(target=run, daemon=True).start()
    ok = done.wait(10)
    if not ok:  # unblock the stuck reader so the thread ends
        fd = os.open(tmp_path / KEY / "spec.json", os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
    assert ok, "the sampler blocked on a FIFO spec.json"
    assert "sim_util" not in out


def test_a_spec_json_link_is_not_followed(tmp_path: Path) -> None:
    u, _ = usage(tmp_path)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"env": {"SIMULATED_GPU_UTIL": "77"}}))
    (tmp_path / KEY / "spec.json").symlink_to(other)
    assert "sim_util" not in sample(u)


def test_a_regular_spec_json_still_gives_sim_util(tmp_path: Path) -> None:
    u, _ = usage(tmp_path)
    (tmp_path / KEY / "spec.json").write_text(json.dumps({"env": {"SIMULATED_GPU_UTIL": "77"}}))
    assert sample(u)["sim_util"] == 77.0
