"""`hybridctl eff`: its text form, and that the command stays on the CLI's fast path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hybridctl.cli.eff import render
from hybridctl.core.efficiency import Allocation, GpuPoint, summarize

T0 = 1_700_000_000.0


def test_the_text_names_each_gpu_and_the_waste() -> None:
    pts = [GpuPoint(T0 + i, 1, 0.0, 0.0, 500.0, 81920.0, 0.0) for i in range(100)]
    eff = summarize("12", "RUNNING", [Allocation("gpu-a", (0, 1), 8.0, T0, None, "12.a0.r0")],
                    {("gpu-a", 0): pts, ("gpu-a", 1): pts}, {}, now=T0 + 3600, memory_mb=65536,
                    idle_s=3000.0).to_dict()
    text = render(eff)
    assert "Job 12  RUNNING" in text
    assert "0.00 of 2.00 GPU-hours used (0%)" in text
    assert "IDLE" in text and "50 min" in text
    assert "gpu-a" in text and "500M / 80.0G" in text
    assert "peak RSS - of 64.0G requested" in text


def test_eff_loads_nothing_heavy(tmp_path: Path) -> None:
    probe = ("import sys; from hybridctl.cli.main import main; rc = main(sys.argv[1:]); "
             "print('HEAVY', sorted(m for m in ('textual', 'asyncssh', 'torch', 'sqlite_utils', 'prometheus_client')"
             " if m in sys.modules), rc)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYBRIDCTL_")}
    env["HYBRIDCTL_HOME"] = str(tmp_path)
    res = subprocess.run([sys.executable, "-c", probe, "eff", "1"], env=env, capture_output=True, text=True,
                         timeout=60, stdin=subprocess.DEVNULL, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[-1] == "HEAVY [] 1", (res.stdout, res.stderr)
