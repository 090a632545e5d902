"""Chunked checkpoint sync over real SSH (issue 15): a job running as `nobody` rewrites its
checkpoint with one chunk changed; the controller's periodic sync moves that chunk only and its
copy is exact; the next attempt finds the checkpoint as it was last written."""

from __future__ import annotations

import hashlib
import os
import re
import textwrap
from pathlib import Path

from hybridctl.control.checkpoints import CHUNK_SIZE
from tests.integration.one_node import OneNode, lab, store, world_base  # noqa: F401 - fixtures
from tests.waiting import wait_for

SIZE = 10 * CHUNK_SIZE + 1000


def synced(lab: OneNode, job: str) -> list[int]:
    return [int(n) for n in re.findall(rf"checkpoint of {job} synced: (\d+) bytes", lab.ctl.log.read_text())]


def test_a_one_chunk_change_moves_one_chunk_and_the_next_attempt_resumes_from_it(lab: OneNode) -> None:
    v1 = bytearray(os.urandom(SIZE))
    v2 = bytearray(v1)
    v2[7 * CHUNK_SIZE + 99] ^= 0xFF
    for name, data in (("v1", v1), ("v2", v2)):
        (lab.drop / name).write_bytes(data)
        (lab.drop / name).chmod(0o644)
    d = lab.drop
    script = textwrap.dedent(f'''\
        D="$HYBRIDCTL_CHECKPOINT_DIR"
        await_file() {{ i=0; while [ ! -e "{d}/$1" ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i + 1)); done; }}
        if [ "$HYBRIDCTL_ATTEMPT" = 0 ]; then
          cp {d}/v1 {d}/t && mv -f {d}/t "$D/w.bin"  # whole, at once (a temp in $D would sync too)
          await_file go1
          cp {d}/v2 {d}/t && mv -f {d}/t "$D/w.bin"  # whole, at once (a temp in $D would sync too)
          await_file go2
          exit 3
        fi
        sha256sum "$D/w.bin"
    ''')
    job = lab.submit_as_nobody("--max-restarts", "1", "--", script)
    copy = store(lab, job) / "w.bin"

    def holds(data: bytes) -> bool:
        try:
            return copy.stat().st_size == SIZE and copy.read_bytes() == data
        except OSError:
            return False

    wait_for(lambda: holds(v1), 60, what=f"the first sync of job {job} (log: {lab.ctl.log})")
    # The copy is in place a moment before the sync is logged.
    wait_for(lambda: synced(lab, job), 10, what="the first sync logged")
    assert synced(lab, job) == [SIZE]  # the first sync: the whole file
    (lab.drop / "go1").touch()
    wait_for(lambda: holds(v2), 60, what=f"the sync of the changed checkpoint (log: {lab.ctl.log})")
    wait_for(lambda: len(synced(lab, job)) >= 2, 10, what="the second sync logged")
    assert synced(lab, job) == [SIZE, CHUNK_SIZE]  # one chunk of eleven moved
    (lab.drop / "go2").touch()
    t = wait_for(lambda: (x := lab.task(job))["state"] in ("SUCCEEDED", "FAILED") and x["attempt"] == 1 and x, 60,
                 what=f"attempt 1 of job {job} ended")
    assert t["state"] == "SUCCEEDED"
    out = lab.ctl.cli("logs", job, check=True).stdout
    assert hashlib.sha256(v2).hexdigest() in out
