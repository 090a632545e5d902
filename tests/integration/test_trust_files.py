"""Trust at the file-transfer boundary (issue 12), attacked as it was: jobs run as `nobody` on a
real agent behind a real sshd, and try to make the controller's checkpoint pull and push read or
write through their links as root; a deliberately lying agent names paths outside the job's
checkpoint directory. Nothing may be read or written beyond what the job's user may touch."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.integration.nodes import LabNode
from tests.integration.one_node import OneNode, lab, start_lab, store, world_base  # noqa: F401 - fixtures
from tests.integration.other_user import AsUser
from tests.waiting import wait_for

LYING_AGENT = textwrap.dedent('''\
    """A deliberately misbehaving agent (LyingAgent): the real one, except that its checkpoint
    listings name paths outside the job's directory: `..` parts and an absolute path. It stages
    real files at the places those lies point to, so a controller that joined the names unchecked
    would copy them there."""
    import os, sys
    from hybridctl_agent import cli, ops

    LIES = os.environ["LYING_AGENT_LIES"].split(":")
    MARK = os.environ["LYING_AGENT_MARK"]

    def plant(root):
        os.makedirs(os.path.join(root, "ok"), exist_ok=True)  # `..` needs real directories to climb
        for rel in LIES:
            path = os.path.normpath(os.path.join(root, rel))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            if not os.path.exists(path):
                with open(path, "w") as f:
                    f.write("LIE!")

    async def lying_checkpoint_files(self, req):  # what an agent of the old protocol would answer
        root = str(self.jobs.checkpoint_dir(req["key"])) + "/a/b"
        plant(root)
        with open(MARK, "a") as f:
            f.write("checkpoint_files\\n")
        return {"root": root, "files": {rel: [4, 1] for rel in LIES}}

    async def lying_stage_pull(self, req):
        if req.get("copy") is False:
            return {"files": {}, "staged": {}}
        token, path = self.staging.open()
        plant(str(path))
        with open(MARK, "a") as f:
            f.write("stage_pull\\n")
        lies = {rel: [4, 1] for rel in LIES}
        return {"files": lies, "staged": lies, "token": token, "path": str(path), "skipped": []}

    ops.Ops.checkpoint_files = lying_checkpoint_files
    ops.Ops.stage_pull = lying_stage_pull
    sys.exit(cli.main())
''')


class LyingNode(LabNode):
    def start_agent(self) -> None:
        script = self.base / "lying_agent.py"
        script.write_text(LYING_AGENT)
        log = open(self.base / "agent.log", "ab")
        self.agent = subprocess.Popen(
            [sys.executable, str(script), "serve", "--socket", str(self.socket), "--state-dir", str(self.state_dir),
             "--simulate-gpus", self.gpus, "--name", self.name, "--interval", "0.5"],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        log.close()
        wait_for(self.socket.exists, 30, what=f"agent socket of {self.name}")


def test_restore_never_writes_through_links_the_job_planted(lab: OneNode) -> None:
    """Attack 1: checkpoint, wait for a sync, swap a file and a directory for links to root's,
    exit non-zero. The restore before the next attempt must not write through either link."""
    victims = lab.base / "victims"
    (victims / "cron.d").mkdir(parents=True)
    crontab = victims / "crontab"
    crontab.write_text("ORIGINAL\n")
    script = textwrap.dedent(f'''\
        D="$HYBRIDCTL_CHECKPOINT_DIR"
        if [ "$HYBRIDCTL_ATTEMPT" = 0 ]; then
          echo '* * * * * root touch /pwned' > "$D/cron"
          mkdir -p "$D/sub" && echo '* * * * * root touch /pwned' > "$D/sub/evil"
          truncate -s 3M "$D/sparse" && printf x | dd of="$D/sparse" bs=1 seek=1000 conv=notrunc 2>/dev/null
          echo tamper > {crontab} 2>/dev/null && echo "the job can write the victim itself"
          for i in $(seq 600); do [ -e {lab.drop}/go ] && break; sleep 0.05; done
          rm -f "$D/cron" && ln -s {crontab} "$D/cron"
          rm -rf "$D/sub" && ln -s {victims / "cron.d"} "$D/sub"
          exit 3
        fi
        echo "attempt $HYBRIDCTL_ATTEMPT: $(stat -c %s "$D/sparse") $(cat "$D/cron")"
    ''')
    job = lab.submit_as_nobody("--max-restarts", "1", "--", script)
    ckpt = store(lab, job)
    wait_for(lambda: (ckpt / "cron").exists() and (ckpt / "sub" / "evil").exists() and (ckpt / "sparse").exists(),
             30, what="the first checkpoint synced to the controller")
    (lab.drop / "go").touch()
    t = wait_for(lambda: (x := lab.task(job))["state"] in ("SUCCEEDED", "FAILED") and x["attempt"] == 1 and x,
                 40, what=f"attempt 1 of job {job} ended (log: {lab.ctl.log})")
    assert t["state"] == "SUCCEEDED"
    assert crontab.read_text() == "ORIGINAL\n"
    assert list((victims / "cron.d").iterdir()) == []
    out = lab.ctl.cli("logs", job, check=True).stdout
    assert "the job can write the victim itself" not in out
    # The restored files are the job's own, in its own directory (the links were replaced, not followed);
    # the sparse file came back whole: 3 MiB, where a sparse SFTP copy used to drop the trailing hole.
    assert f"attempt 1: {3 << 20} * * * * * root touch /pwned" in out
    assert (ckpt / "sparse").stat().st_size == 3 << 20


def test_pull_never_reads_through_a_link_swapped_in_for_a_file(lab: OneNode) -> None:
    """Attack 2: swap a checkpoint file between a regular file and a link to a root-only file
    while syncs run; the secret must reach neither the controller nor the next attempt."""
    secret = lab.base / "secret"
    secret.write_text("TOPSECRET-42\n")
    secret.chmod(0o600)
    script = textwrap.dedent(f'''\
        D="$HYBRIDCTL_CHECKPOINT_DIR"
        if [ "$HYBRIDCTL_ATTEMPT" = 0 ]; then
          cat {secret} 2>/dev/null && echo "the job can read the secret itself"
          end=$((SECONDS + 6)); i=0
          while [ $SECONDS -lt $end ]; do
            i=$((i + 1))
            ln -sfn {secret} "$D/.l" && mv -Tf "$D/.l" "$D/data"
            echo "public $i" > "$D/.r" && mv -Tf "$D/.r" "$D/data"
          done
          exit 3
        fi
        echo "attempt $HYBRIDCTL_ATTEMPT"; cat "$D"/* 2>/dev/null
    ''')
    job = lab.submit_as_nobody("--max-restarts", "1", "--", script)
    copy = store(lab, job) / "data"
    leaked = []

    def ended() -> object:
        """Also watch the controller's copy while the syncs run: a leak stays there until the next
        sync replaces it (about a second), long enough to be seen here."""
        try:
            if b"TOPSECRET" in copy.read_bytes():
                leaked.append(True)
        except OSError:
            pass
        t = lab.task(job)
        return t["state"] in ("SUCCEEDED", "FAILED") and t["attempt"] == 1 and t

    t = wait_for(ended, 45, interval=0.02, what=f"attempt 1 of job {job} ended (log: {lab.ctl.log})")
    assert leaked == []
    assert t["state"] == "SUCCEEDED"
    out = lab.ctl.cli("logs", job, check=True).stdout
    assert "attempt 1" in out and "public" in out  # the checkpoint did travel
    assert "TOPSECRET" not in out and "can read the secret" not in out
    for path in store(lab, job).rglob("*"):
        if path.is_file():
            assert b"TOPSECRET" not in path.read_bytes(), path


def test_a_lying_agent_cannot_make_the_controller_write_outside_the_jobs_store(
        world_base: Path, as_user: AsUser) -> None:
    """Attack 3: a LyingAgent's listing names `../../..` paths and an absolute path, with real
    files staged behind them; the controller writes nothing outside the job's checkpoint store."""
    absolute = world_base / "abs_target"
    absolute.write_text("LIE!")  # what the lie would copy there: the inode tells a copy apart
    inode = absolute.stat().st_ino
    lies = ["../../../escaped", "ok/../../../../escaped2", str(absolute)]
    os.environ["LYING_AGENT_LIES"] = ":".join(lies)  # inherited by the agent only
    os.environ["LYING_AGENT_MARK"] = str(world_base / "lied")
    try:
        lab = start_lab(world_base, as_user, LyingNode)
    finally:
        del os.environ["LYING_AGENT_LIES"], os.environ["LYING_AGENT_MARK"]
    try:
        job = lab.ctl.cli("submit", "--", "sleep 60", check=True).stdout.strip()
        mark = world_base / "lied"
        wait_for(lambda: mark.exists() and len(mark.read_text().split()) >= 3, 30, what="three lying listings")
        ckpt = store(lab, job)
        outside = sorted(str(p) for p in world_base.rglob("*escaped*"))
        assert [p for p in outside if not p.startswith(str(lab.node.base))] == []  # node-side plants only
        assert absolute.read_text() == "LIE!" and absolute.stat().st_ino == inode
        assert not (world_base / ".abs_target.part").exists()
        if ckpt.exists():
            assert [p.name for p in ckpt.rglob("*") if p.name != ".hybridctl-manifest.json"] == []
        wait_for(lambda: "not a path inside the job's directory" in lab.ctl.log.read_text(), 30,
                 what="the lie logged")  # the node marks its lie before the controller reads it
        lab.ctl.cli("cancel", job, check=True)
    finally:
        lab.ctl.stop()
        lab.node.stop()
