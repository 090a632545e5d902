"""`hybridctl.job.log`: buffered numeric metrics written for the agent; never raises into the loop."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hybridctl import job


@pytest.fixture
def metrics_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "metrics.jsonl"
    path.touch()
    monkeypatch.setenv("HYBRIDCTL_METRICS_FILE", str(path))
    return path


def test_numbers_are_written_and_everything_else_is_skipped(metrics_file: Path) -> None:
    job.log(step=1, loss=0.5, word="x", flag=True, bad=float("nan"), big=float("inf"))
    job.log(word="only")
    job.flush()
    lines = [json.loads(line) for line in metrics_file.read_text().splitlines()]
    assert [line["v"] for line in lines] == [{"step": 1.0, "loss": 0.5}]
    assert lines[0]["t"] > 0


def test_the_writer_thread_flushes_without_being_asked(metrics_file: Path) -> None:
    from tests.waiting import wait_for

    job.log(step=7)
    wait_for(lambda: '"step":7' in metrics_file.read_text(), 10, what="the background flush")


def test_a_missing_or_broken_file_never_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYBRIDCTL_METRICS_FILE", str(tmp_path / "gone" / "metrics.jsonl"))
    before = job.dropped
    job.log(step=1)
    job.flush()
    assert job.dropped == before + 1
    monkeypatch.delenv("HYBRIDCTL_METRICS_FILE")
    job.log(step=1)  # outside a job: nothing at all
    job.flush()


def test_the_file_is_emptied_past_its_cap(metrics_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(job, "LOG_FILE_MAX", 200)
    for i in range(20):
        job.log(step=i)
        job.flush()
    assert metrics_file.stat().st_size <= 200
    assert json.loads(metrics_file.read_text().splitlines()[-1])["v"] == {"step": 19.0}


def test_the_helper_stays_stdlib_only() -> None:
    probe = ("import sys; before = set(sys.modules); from hybridctl import job; job.log(a=1); "
             "print(sorted({m.split('.')[0] for m in set(sys.modules) - before} - set(sys.stdlib_module_names)))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "['hybridctl']"
