"""Identity comes from the kernel (SO_PEERCRED): user B cannot touch user A's job."""

from __future__ import annotations

import ast
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import require
from tests.integration.harness import REPO, ControllerProc

# Runs as root, imports, then drops to the other uid before connecting: the checkout and its venv
# may sit under a directory the other uid cannot enter (a clone in /root, or CI's private copy), so a
# fresh process as `nobody` could not even start the venv's Python. After the setuid the CLI still
# imports lazily (hybridctl.paths, the client, ...): those come from a world-readable copy of the
# package (`hybridctl_copy`), and every stdlib module the package names anywhere is imported first,
# in case the interpreter's own files are private too.
AS_OTHER_USER = textwrap.dedent(
    """
    import contextlib, importlib, io, os, sys
    import hybridctl
    assert hybridctl.__file__.startswith(os.environ["PYTHONPATH"]), hybridctl.__file__
    from hybridctl.cli.main import build_parser, main
    for name in sys.argv[3].split(","):
        importlib.import_module(name)
    build_parser()  # argparse loads gettext/locale lazily: do it while the interpreter's files are readable
    uid, gid = int(sys.argv[1]), int(sys.argv[2])
    os.setgroups([]); os.setgid(gid); os.setuid(uid)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = main(sys.argv[4:])
    print(code); print(err.getvalue().strip())
    """
)


def stdlib_imports(package: Path) -> list[str]:
    """Every stdlib module that an import statement anywhere in `package` names, at any depth
    (function bodies too: those are the lazy imports that run after the setuid)."""
    names: set[str] = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module)
    return sorted(n for n in names if n.partition(".")[0] in sys.stdlib_module_names
                  and n.partition(".")[0] not in ("__future__", "winreg", "msvcrt", "_winapi"))


@pytest.fixture(scope="module")
def hybridctl_copy() -> Iterator[tuple[Path, str]]:
    """A copy of the package that any uid can read, in a directory any uid can enter, and the
    stdlib modules to import before the setuid (comma-separated)."""
    base = Path(tempfile.mkdtemp(prefix="hyb-pkg-"))
    shutil.copytree(REPO / "hybridctl", base / "hybridctl", ignore=shutil.ignore_patterns("__pycache__"))
    for root, _dirs, files in os.walk(base):
        os.chmod(root, 0o755)
        for f in files:
            os.chmod(os.path.join(root, f), 0o644)
    yield base, ",".join(stdlib_imports(base / "hybridctl"))
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def as_user(controller: ControllerProc, hybridctl_copy: tuple[Path, str]) -> AsUser:
    require(os.geteuid() == 0, "needs root to run a client as another uid")
    return AsUser(controller, *hybridctl_copy)


class AsUser:
    """Runs the real CLI's `main` as another uid against the controller (SO_PEERCRED sees that uid)."""

    def __init__(self, c: ControllerProc, package: Path, preload: str) -> None:
        self.c, self.package, self.preload = c, package, preload

    def __call__(self, uid: int, gid: int, *args: str) -> tuple[int, str]:
        env = dict(self.c.env, PYTHONPATH=str(self.package))
        p = subprocess.run([sys.executable, "-c", AS_OTHER_USER, str(uid), str(gid), self.preload, *args],
                           env=env, cwd=self.package, capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        code, _, err = p.stdout.partition("\n")
        return int(code), err


def test_other_user_cannot_cancel_or_reprioritise(controller: ControllerProc, as_user: AsUser) -> None:
    nobody = pwd.getpwnam("nobody")
    job = controller.cli("submit", "--", "true", check=True).stdout.strip()
    code, err = as_user(nobody.pw_uid, nobody.pw_gid, "cancel", job)
    assert code == 3, err
    assert "nobody" in err and "root" in err and "may not cancel" in err
    code, err = as_user(nobody.pw_uid, nobody.pw_gid, "priority", job, "10")
    assert code == 3
    code, err = as_user(nobody.pw_uid, nobody.pw_gid, "node", "drain", "gpu01")
    assert code == 3 and "drain" in err
    assert controller.cli_json("show", job)["tasks"][0]["state"] != "CANCELLED"
    # nobody's own job: submitted and cancelled by nobody, attributed to nobody.
    code, err = as_user(nobody.pw_uid, nobody.pw_gid, "submit", "--", "true")
    assert code == 0, err
    rows = controller.cli_json("queue", "--all")
    mine = [r for r in rows if r["user"] == "nobody"]
    assert len(mine) == 1
    code, err = as_user(nobody.pw_uid, nobody.pw_gid, "cancel", "--all-mine")
    assert code == 0, err
    assert [r["user"] for r in controller.cli_json("queue", "--all")] == ["root"]


def test_non_admin_cannot_submit_above_user_priority_cap(as_user: AsUser) -> None:
    nobody = pwd.getpwnam("nobody")
    code, err = as_user(nobody.pw_uid, nobody.pw_gid, "submit", "--priority", "500", "--", "true")
    assert code == 3 and "500" in err


def test_tilde_in_a_job_file_is_the_home_of_the_uid_that_submits_it(
    controller: ControllerProc, as_user: AsUser
) -> None:
    """The controller expands `~` from the caller's uid (SO_PEERCRED), not from anything the client
    says: the same file submitted by root and by nobody gets each one's own home."""
    nobody = pwd.getpwnam("nobody")
    shared = Path(tempfile.mkdtemp(prefix="hyb-jobs-"))
    try:
        os.chmod(shared, 0o755)
        (shared / "job.yaml").write_text("workdir: ~/src\ncheckpoint_dir: ckpt\nrun: 'true'\n")
        (shared / "job.yaml").chmod(0o644)
        code, err = as_user(nobody.pw_uid, nobody.pw_gid, "submit", str(shared / "job.yaml"))
        assert code == 0, err
        controller.cli("submit", str(shared / "job.yaml"), check=True)
    finally:
        shutil.rmtree(shared)
    rows = controller.cli_json("queue", "--all")
    specs = {r["user"]: controller.cli_json("show", str(r["job_id"]))["spec"] for r in rows}
    assert specs["nobody"]["workdir"] == os.path.join(nobody.pw_dir, "src")
    assert specs["root"]["workdir"] == os.path.join(pwd.getpwuid(0).pw_dir, "src")
    assert specs["nobody"]["checkpoint_dir"] == specs["root"]["checkpoint_dir"] == str(shared / "ckpt")
