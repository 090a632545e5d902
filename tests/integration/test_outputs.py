"""`hybridctl outputs`: a cloud job's $HYBRIDCTL_OUTPUT_DIR, copied back into the controller's
private home, reaches its owner (and admins) only through the owner-checked `outputs` and
`output_read` ops, and the controller (root) never follows a link in that copy. A real controller,
the simulated cloud of tests/cloud/lab.py (agent + SSH server on loopback), the real CLI; the other
user is `nobody` (tests/integration/other_user.py)."""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from hybridctl.control.client import Client
from hybridctl.core.errors import HybridctlError
from tests.cloud.lab import CloudLab
from tests.conftest import require
from tests.integration.other_user import AsUser

NOBODY = pwd.getpwnam("nobody")
BIG = 2 * 1024 * 1024 + 123
"""More than one chunk (1 MiB), and not a multiple of it."""


class Cloud:
    """The lab, a finished cloud job that left outputs (and links), a two-node cloud job, and a
    scratch directory."""

    def __init__(self, lab: CloudLab, base: Path, job: str, multi: str) -> None:
        self.lab, self.base, self.job, self.multi = lab, base, job, multi
        self.copy = lab.ctl.home / "outputs" / f"{job}.a0.r0"
        """The controller's copy of the job's output directory."""

    def cli(self, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "hybridctl.cli.main", *args], cwd=cwd or self.base,
                              env=self.lab.ctl.env, capture_output=True, text=True, timeout=120,
                              stdin=subprocess.DEVNULL)

    def raw(self, op: str, **args: Any) -> Any:
        with Client(self.lab.ctl.socket, timeout=30) as c:
            return c.call(op, **args)


@pytest.fixture(scope="module")
def cloud() -> Iterator[Cloud]:
    require(os.geteuid() == 0, "needs root: the controller reads its copies as root, and nobody must be refused")
    base = Path(tempfile.mkdtemp(prefix="hyb-outputs-"))  # every uid can enter: nobody downloads below it
    base.chmod(0o755)
    secret = base / "root-only"
    secret.write_text("TOPSECRET-output\n")
    secret.chmod(0o600)
    lab = CloudLab(base, burst={"after": 0.5, "idle_timeout": 60.0, "max_nodes": 3})
    try:
        lab.start()
        # Run by the controller's own user (simulated machines inherit its umask 077, which closes
        # their directories to other uids); the links must still never come back.
        job = lab.submit(
            "--placement", "cloud", "--gpus", "A100:1", "--",
            'O="$HYBRIDCTL_OUTPUT_DIR"; echo result > "$O/out.txt"; mkdir -p "$O/d/e"; : > "$O/empty";'
            f' head -c {BIG} /dev/urandom > "$O/d/e/big.bin"; ln -s /etc/shadow "$O/shadow";'
            f' ln -s {secret} "$O/leak"; ln -s /etc "$O/etc"; echo done')
        # Submitted before any cloud node exists: with one there, submit measures a multi-node job
        # against the fleet as it is (one cloud node) and refuses it.
        multi = lab.submit("--placement", "cloud", "--nodes", "2", "--gpus", "A100:1", "--",
                           'echo "rank $HYBRIDCTL_NODE_RANK" > "$HYBRIDCTL_OUTPUT_DIR/who.txt"')
        t = lab.wait_state(job, "SUCCEEDED", "FAILED", timeout=120)
        assert t["state"] == "SUCCEEDED", lab.ctl.log.read_text()[-3000:]
        yield Cloud(lab, base, job, multi)
    finally:
        lab.stop()
        shutil.rmtree(base, ignore_errors=True)


def tree(root: Path) -> dict[str, str]:
    """Every entry below `root`: path -> 'link', 'dir' or the file's sha256."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = "link" if p.is_symlink() else "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def expected(cloud: Cloud) -> dict[str, str]:
    return {k: v for k, v in tree(cloud.copy).items() if v not in ("link",)}


def test_the_owner_lists_the_files_without_the_links(cloud: Cloud) -> None:
    listed = json.loads(cloud.cli("outputs", cloud.job, "--json").stdout)
    assert listed["files"] == {"out.txt": 7, "empty": 0, "d/e/big.bin": BIG}
    assert listed["total"] == 7 + BIG and listed["attempt"] == 0 and listed["state"] == "SUCCEEDED"
    res = cloud.cli("outputs", cloud.job)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert [ln.split() for ln in lines] == [["PATH", "SIZE"], ["d/e/big.bin", "2.0", "MiB"], ["empty", "0", "B"],
                                            ["out.txt", "7", "B"]]
    assert f"hybridctl outputs {cloud.job} --to" in res.stderr


def test_outputs_imports_no_heavy_module(cloud: Cloud) -> None:
    """The fast-CLI rule (tests/integration/test_cli.py): a download is stdlib and the small core."""
    probe = ("import sys; from hybridctl.cli.main import main; rc = main(sys.argv[1:]); "
             "print('HEAVY', [m for m in ('textual', 'asyncssh', 'torch', 'yaml') if m in sys.modules], rc)")
    res = subprocess.run([sys.executable, "-c", probe, "outputs", cloud.job, "--to", str(cloud.base / "probe")],
                         env=cloud.lab.ctl.env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert res.stdout.splitlines()[-1] == "HEAVY [] 0", res.stderr


def test_the_owner_downloads_exactly_the_files_and_never_overwrites_without_force(cloud: Cloud) -> None:
    work = cloud.base / "owner"
    work.mkdir()
    res = cloud.cli("outputs", cloud.job, "--to", cwd=work)  # default: ./<job>-outputs
    assert res.returncode == 0, res.stderr
    dest = work / f"{cloud.job}-outputs"
    assert res.stdout.strip() == str(Path(f"{cloud.job}-outputs"))
    assert "3 files" in res.stderr
    assert tree(dest) == expected(cloud) == tree(cloud.copy)
    assert set(tree(dest)) == {"out.txt", "empty", "d", "d/e", "d/e/big.bin"}  # no links, no temp files

    (dest / "out.txt").write_text("mine\n")
    res = cloud.cli("outputs", cloud.job, "--to", str(dest))
    assert res.returncode == 2 and "out.txt" in res.stderr and "--force" in res.stderr, res.stderr
    assert (dest / "out.txt").read_text() == "mine\n"  # refused before anything was written
    (dest / "out.txt").unlink()
    (dest / "out.txt").symlink_to(cloud.base / "root-only")  # a link where a file lands is replaced, not written through
    res = cloud.cli("outputs", cloud.job, "--to", str(dest), "--force", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["to"] == str(dest)
    assert tree(dest) == expected(cloud)
    assert (cloud.base / "root-only").read_text() == "TOPSECRET-output\n"


def test_another_user_is_refused_with_exit_3_naming_who_may(cloud: Cloud, as_user: AsUser) -> None:
    target = cloud.base / "stolen"
    for args in (("outputs", cloud.job), ("outputs", cloud.job, "--to", str(target))):
        res = as_user(cloud.lab.ctl.env, NOBODY.pw_uid, NOBODY.pw_gid, *args)
        assert res.code == 3, res.err
        assert "you (nobody) may not read the outputs of job" in res.err and "belongs to root" in res.err
        assert "only its owner or an admin" in res.err
    assert not target.exists()


def test_a_path_outside_the_copy_is_refused_with_exit_2(cloud: Cloud) -> None:
    for path in ("../../hybridctl.db", "/etc/shadow", "d/../out.txt", "./out.txt", "d//e/big.bin", "", "a\0b"):
        with pytest.raises(HybridctlError) as err:
            cloud.raw("output_read", job=cloud.job, path=path)
        assert err.value.exit_code == 2, (path, err.value)
        assert "relative path" in err.value.message
    for bad in ({"offset": -1}, {"max_bytes": 0}, {"max_bytes": 1 << 30}, {"rank": 1}, {"attempt": 3}):
        with pytest.raises(HybridctlError) as err:
            cloud.raw("output_read", job=cloud.job, path="out.txt", **bad)
        assert err.value.exit_code == 2, (bad, err.value)
    with pytest.raises(HybridctlError) as err:
        cloud.raw("output_read", job=cloud.job, path="d/e")  # a directory
    assert err.value.exit_code == 4
    chunk = cloud.raw("output_read", job=cloud.job, path="d/e/big.bin", offset=BIG - 10, max_bytes=100)
    assert (chunk["offset"], chunk["size"], chunk["eof"]) == (BIG, BIG, True)


def test_a_link_planted_in_the_controllers_copy_is_never_followed(cloud: Cloud) -> None:
    secret_dir = cloud.base / "secret-dir"
    secret_dir.mkdir(mode=0o700, exist_ok=True)
    (secret_dir / "secret.txt").write_text("TOPSECRET-dir\n")
    planted = {"planted": cloud.base / "root-only", "pdir": secret_dir, "d/e/inner": Path("/etc/shadow")}
    for rel, to in planted.items():
        (cloud.copy / rel).symlink_to(to)
    os.mkfifo(cloud.copy / "fifo")  # must not hang a read
    try:
        listed = json.loads(cloud.cli("outputs", cloud.job, "--json").stdout)
        assert listed["files"] == {"out.txt": 7, "empty": 0, "d/e/big.bin": BIG}
        for path in ("planted", "pdir/secret.txt", "d/e/inner", "fifo"):
            start = time.monotonic()
            with pytest.raises(HybridctlError) as err:
                cloud.raw("output_read", job=cloud.job, path=path)
            assert err.value.exit_code == 4 and "links are never followed" in err.value.message, (path, err.value)
            assert time.monotonic() - start < 10
        dest = cloud.base / "after-planting"
        res = cloud.cli("outputs", cloud.job, "--to", str(dest))
        assert res.returncode == 0, res.stderr
        assert "4 entries" in res.stderr and "never copied" in res.stderr
        assert set(tree(dest)) == {"out.txt", "empty", "d", "d/e", "d/e/big.bin"}
        for p in dest.rglob("*"):
            assert p.is_dir() or b"TOPSECRET" not in p.read_bytes()
    finally:
        for rel in (*planted, "fifo"):
            (cloud.copy / rel).unlink()


def test_an_owner_who_is_not_root_downloads_with_their_own_rights(cloud: Cloud, as_user: AsUser) -> None:
    """nobody's own job: nobody may read its outputs, and the files it downloads are its own. Its
    copy is put in the controller's home by the test (cloud jobs cannot run as nobody on the
    simulated machines, see the fixture); the copy path is what `pull_outputs` makes."""
    env = cloud.lab.ctl.env
    res = as_user(env, NOBODY.pw_uid, NOBODY.pw_gid, "submit", "--placement", "onprem", "--gpus", "A100:1", "--",
                  "sleep 600")
    assert res.code == 0, res.err
    job = res.out.strip()
    assert as_user(env, NOBODY.pw_uid, NOBODY.pw_gid, "cancel", job).code == 0
    copy = cloud.lab.ctl.home / "outputs" / f"{job}.a0.r0"
    (copy / "sub").mkdir(parents=True)
    (copy / "sub" / "result.csv").write_text("a,b\n1,2\n")
    (copy / "sub" / ".result.csv.hybridctl-part").write_text("the job's own file, not a temp name\n")
    mine = cloud.base / "nobody-home"
    mine.mkdir()
    os.chown(mine, NOBODY.pw_uid, NOBODY.pw_gid)
    res = as_user(env, NOBODY.pw_uid, NOBODY.pw_gid, "outputs", job, "--to", str(mine / "out"))
    assert res.code == 0, res.err
    got = mine / "out" / "sub" / "result.csv"
    assert got.read_text() == "a,b\n1,2\n"
    assert sorted(p.name for p in got.parent.iterdir()) == [".result.csv.hybridctl-part", "result.csv"]
    assert (got.parent / ".result.csv.hybridctl-part").read_text() == "the job's own file, not a temp name\n"
    assert (got.stat().st_uid, (mine / "out").stat().st_uid) == (NOBODY.pw_uid, NOBODY.pw_uid)
    # nobody's rights, not the controller's: a directory nobody cannot write stays untouched.
    res = as_user(env, NOBODY.pw_uid, NOBODY.pw_gid, "outputs", job, "--to", str(cloud.base / "root-owned"))
    assert res.code == 1 and "Permission denied" in res.err, res.err
    assert not (cloud.base / "root-owned").exists()
    # ... and root, an admin, may read nobody's outputs.
    assert json.loads(cloud.cli("outputs", job, "--json").stdout)["files"] == {
        "sub/result.csv": 8, "sub/.result.csv.hybridctl-part": 36}


def test_a_multi_node_jobs_ranks_land_in_their_own_directories(cloud: Cloud) -> None:
    job = cloud.multi
    t = cloud.lab.wait_state(job, "SUCCEEDED", "FAILED", timeout=120)
    assert t["state"] == "SUCCEEDED", cloud.lab.ctl.log.read_text()[-3000:]
    listed = json.loads(cloud.cli("outputs", job, "--json").stdout)
    assert listed["files"] == {"rank0/who.txt": 7, "rank1/who.txt": 7}
    assert json.loads(cloud.cli("outputs", job, "--rank", "1", "--json").stdout)["files"] == {"who.txt": 7}
    res = cloud.cli("outputs", job, "--rank", "2")
    assert res.returncode == 2 and "--rank: 2 is not valid; job" in res.stderr and "ranks 0 to 1" in res.stderr
    dest = cloud.base / "multi"
    assert cloud.cli("outputs", job, "--to", str(dest)).returncode == 0
    assert [(dest / f"rank{r}" / "who.txt").read_text() for r in (0, 1)] == ["rank 0\n", "rank 1\n"]


def test_an_array_names_one_task_and_bad_arguments_name_the_value(cloud: Cloud) -> None:
    job = cloud.lab.submit("--placement", "onprem", "--array", "1-2", "--gpus", "A100:1", "--", "sleep 600")
    cloud.lab.ctl.cli("cancel", job, check=True)
    res = cloud.cli("outputs", job)
    assert res.returncode == 2 and f"job {job} is an array; name one task, e.g. {job}_1" in res.stderr
    copy = cloud.lab.ctl.home / "outputs" / f"{job}_2.a0.r0"
    copy.mkdir(parents=True)
    (copy / "t2.txt").write_text("two\n")
    assert json.loads(cloud.cli("outputs", f"{job}_2", "--json").stdout)["files"] == {"t2.txt": 4}
    res = cloud.cli("outputs", f"{job}_1")
    assert res.returncode == 0 and res.stdout == "" and "left no outputs" in res.stderr
    for args, named in ((("abc",), "'abc' is not valid"), ((f"{job}_2", "--attempt", "3"), "--attempt: 3"),
                        ((f"{job}_9",), f"job {job} has no task 9"), (("--rank", "x", job), "'x'")):
        res = cloud.cli("outputs", *args)
        assert res.returncode in (2, 4) and named in res.stderr, (args, res.stderr)
    existing = cloud.base / "a-file"
    existing.write_text("")
    res = cloud.cli("outputs", f"{job}_2", "--to", str(existing))
    assert res.returncode == 2 and f"--to: '{existing}' exists and is not a directory" in res.stderr
    res = cloud.cli("outputs", f"{job}_2", "--force")
    assert res.returncode == 2 and "--force" in res.stderr
