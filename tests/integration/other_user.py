"""Run the real CLI as another uid (`nobody`) against a test controller, from any checkout.

The child starts as root, imports, then drops to the other uid before connecting, so
SO_PEERCRED sees that uid. The checkout and its venv may sit under a directory the other uid
cannot enter (a clone in /root, or CI's private copy), and after the setuid the CLI still
imports lazily (hybridctl.paths, the client, ...): those come from a world-readable copy of the
package, and every stdlib module the package names anywhere is imported first, in case the
interpreter's own files are private too."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from tests.integration.harness import REPO

SCRIPT = textwrap.dedent(
    """
    import contextlib, importlib, io, json, os, sys
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
    print(json.dumps({"code": code, "out": out.getvalue(), "err": err.getvalue()}))
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


def readable_package() -> Iterator[tuple[Path, str]]:
    """A copy of the package that any uid can read, in a directory any uid can enter, and the
    stdlib modules to import before the setuid (comma-separated). A generator for a fixture."""
    base = Path(tempfile.mkdtemp(prefix="hyb-pkg-"))
    try:
        shutil.copytree(REPO / "hybridctl", base / "hybridctl", ignore=shutil.ignore_patterns("__pycache__"))
        for root, _dirs, files in os.walk(base):
            os.chmod(root, 0o755)
            for f in files:
                os.chmod(os.path.join(root, f), 0o644)
        yield base, ",".join(stdlib_imports(base / "hybridctl"))
    finally:
        shutil.rmtree(base, ignore_errors=True)


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str


@dataclass(frozen=True)
class AsUser:
    """Runs `hybridctl ARGS` (the real CLI's `main`) as `uid`/`gid` with the environment `env`
    (the test controller's: HYBRIDCTL_SOCKET and friends)."""

    package: Path
    preload: str

    def __call__(self, env: dict[str, Any], uid: int, gid: int, *args: str) -> Result:
        env = dict(env, PYTHONPATH=str(self.package))
        p = subprocess.run([sys.executable, "-c", SCRIPT, str(uid), str(gid), self.preload, *args],
                           env=env, cwd=self.package, capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        res = json.loads(p.stdout.strip().splitlines()[-1])
        return Result(int(res["code"]), res["out"], res["err"])


@dataclass(frozen=True)
class BoundCli:
    """`AsUser` bound to one controller's environment: `(uid, gid, *args) -> (exit code, stderr)`."""

    as_user: AsUser
    env: dict[str, Any]

    def __call__(self, uid: int, gid: int, *args: str) -> tuple[int, str]:
        res = self.as_user(self.env, uid, gid, *args)
        return res.code, res.err.strip()
