"""Exit codes are defined once (`core.errors.ExitCode`): every error's `exit_code` is one of them,
and no code returns a bare number the enum does not name."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

from hybridctl.core.errors import ExitCode, HybridctlError

PACKAGE = Path(__file__).resolve().parents[2] / "hybridctl"


def _error_classes() -> list[tuple[str, str]]:
    """(module, class) of every class in hybridctl/ that sets `exit_code` in its body."""
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        mod = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and any(
                isinstance(s, (ast.Assign, ast.AnnAssign)) and "exit_code" in ast.unparse(s).split("=")[0]
                for s in node.body
            ):
                out.append((mod, node.name))
    return out


def test_every_error_exit_code_is_an_exit_code() -> None:
    found = _error_classes()
    assert ("hybridctl.ssh.link", "HostKeyRefused") in found and len(found) >= 8
    for mod, name in found:
        cls = getattr(importlib.import_module(mod), name)
        if not (isinstance(cls, type) and issubclass(cls, HybridctlError)):
            continue  # a dataclass field named exit_code (a job's), not an error's status
        assert cls.exit_code in set(ExitCode), f"{mod}.{name}.exit_code = {cls.exit_code} is not an ExitCode"


def test_no_bare_exit_status_in_the_cli_and_the_demo() -> None:
    """`return 130` and friends: a status the enum does not name."""
    bad = []
    for path in [PACKAGE / "cli" / "main.py", PACKAGE / "cli" / "cloud.py", PACKAGE / "demo.py"]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Return) and isinstance(node.value, ast.Constant)
                    and isinstance(node.value.value, int) and not isinstance(node.value.value, bool)
                    and node.value.value not in (0, 1)):
                bad.append(f"{path.name}:{node.lineno} returns {node.value.value}")
    assert not bad, bad


def test_the_numbers_scripts_rely_on() -> None:
    assert [int(c) for c in ExitCode] == [0, 1, 2, 3, 4, 5, 130]
