"""`python tests/integration/lying_agent.py serve ...`: a deliberately misbehaving `hybridctl-agent`.

It is the real agent with one thing changed: every job listing also carries the records in the JSON
file named by `HYBRIDCTL_TEST_LIES` (read at each listing, so a test starts and stops lying by
writing that file), and `logs` and `forget` play along for those made-up keys. A node running it
claims jobs it was never given, or sends records a real agent never would."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, List

from hybridctl_agent import cli, jobs, ops

LIES = Path(os.environ["HYBRIDCTL_TEST_LIES"])


def lies() -> List[Any]:
    try:
        data = json.loads(LIES.read_text())
    except (FileNotFoundError, ValueError):
        return []
    return data if isinstance(data, list) else []


def lied_about(key: object) -> bool:
    return any(isinstance(r, dict) and r.get("key") == key for r in lies())


_refresh = jobs.JobManager.refresh
_logs = ops.Ops.logs
_forget = ops.Ops.forget


def lying_refresh(self: jobs.JobManager) -> List[Dict[str, Any]]:
    return _refresh(self) + lies()


async def lying_logs(self: ops.Ops, req: Dict[str, Any]) -> Dict[str, Any]:
    if not lied_about(req.get("key")):
        return await _logs(self, req)
    data = f"forged {req.get('stream')} from the lying agent\n"
    start = min(int(req.get("offset") or 0), len(data))
    return {"data": data[start:], "offset": len(data), "eof": True}


async def lying_forget(self: ops.Ops, req: Dict[str, Any]) -> Dict[str, Any]:
    if lied_about(req.get("key")):
        return {}
    return await _forget(self, req)


jobs.JobManager.refresh = lying_refresh  # type: ignore[method-assign]
ops.Ops.logs = lying_logs  # type: ignore[method-assign]
ops.Ops.forget = lying_forget  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(cli.main())
