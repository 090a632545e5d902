"""The controller's parts depend on each other in one direction: no import cycle among
hybridctl/control modules (function-local imports included), and SSH stays behind hybridctl/ssh/."""

from __future__ import annotations

import ast
from pathlib import Path

import hybridctl.control

CONTROL = Path(hybridctl.control.__file__).parent


def imports(path: Path) -> set[str]:
    """The hybridctl.control modules `path` imports, anywhere in the file."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "hybridctl.control":
                out |= {f"hybridctl.control.{a.name}" for a in node.names}
            elif node.module.startswith("hybridctl.control."):
                out.add(node.module)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("hybridctl.control.")}
    return out


def test_no_import_cycle_among_the_controller_parts() -> None:
    graph = {f"hybridctl.control.{p.stem}": imports(p) for p in CONTROL.glob("*.py")}
    done: set[str] = set()

    def visit(mod: str, path: tuple[str, ...]) -> None:
        assert mod not in path, "import cycle: " + " -> ".join(path[path.index(mod):] + (mod,))
        if mod in done:
            return
        for dep in sorted(graph.get(mod, ())):
            visit(dep, path + (mod,))
        done.add(mod)

    for mod in sorted(graph):
        visit(mod, ())
    assert "hybridctl.control.service" not in set().union(*(deps for m, deps in graph.items()
                                                            if m != "hybridctl.control.daemon"))


def test_the_fleet_and_the_autoscaler_leave_ssh_to_hybridctl_ssh() -> None:
    for name in ("fleet.py", "autoscaler.py", "service.py", "lifecycle.py", "daemon.py"):
        text = (CONTROL / name).read_text()
        assert "asyncssh" not in text, name
        assert "type: ignore" not in text, name  # no wiring by attributes set after construction
