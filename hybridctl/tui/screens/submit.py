"""`SubmitDialog`: a job from the common fields, or from a YAML file (the fields then override
it, as flags do for `hybridctl submit FILE`). The spec is built with the CLI's own
`apply_flags`/`load_yaml` and validated before it is sent, so errors name the field here."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Grid, Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label

from hybridctl.core.errors import HybridctlError, SpecError
from hybridctl.tui.widgets.prompt import FieldInput

FIELDS = [
    ("file", "YAML file", "optional: path to a job YAML (fields below override it)"),
    ("name", "Name", "e.g. resnet"),
    ("gpus", "GPUs", "e.g. 2 or A100:2"),
    ("cpus", "CPUs", "per node, e.g. 8"),
    ("memory", "Memory", "per node, e.g. 64G"),
    ("time_limit", "Time limit", "e.g. 2h, 90m"),
    ("priority", "Priority", "-1000..1000 (default 0)"),
    ("run", "Command", "e.g. python train.py --lr 3e-4"),
]


@dataclass(frozen=True)
class SubmitRequest:
    """What `op_submit` takes: the user-level spec mapping and where it came from."""

    spec: dict[str, Any]
    source: str
    warnings: tuple[str, ...] = ()


def build_spec(values: dict[str, str]) -> SubmitRequest:
    """Form values (empty = not given) -> a validated spec, as `hybridctl submit` builds it."""
    from hybridctl.core import spec as specmod
    from hybridctl.textfile import read_text

    v = {k: (x.strip() or None) for k, x in values.items()}
    data: dict[str, Any] = {}
    source = "TUI form"
    if v.get("file"):
        path = Path(os.path.expanduser(str(v["file"])))
        source = str(path)
        try:
            text = read_text(path)
        except OSError as exc:
            raise SpecError("YAML file", str(path), f"cannot read it ({exc.strerror}); give a job YAML file") from exc
        data = specmod.load_yaml(text, source)
    data = specmod.apply_flags(
        data, gpus=v.get("gpus"), cpus=v.get("cpus"), memory=v.get("memory"), name=v.get("name"),
        priority=v.get("priority"), time_limit=v.get("time_limit"), run=[v["run"]] if v.get("run") else None,
    )
    if data.get("workdir") and v.get("file") and not os.path.isabs(str(data["workdir"])):
        data["workdir"] = str((Path(str(v["file"])).resolve().parent / str(data["workdir"])).resolve())
    _spec, warnings = specmod.parse_spec(data, source)
    return SubmitRequest(data, source, tuple(warnings))


class SubmitDialog(ModalScreen["SubmitRequest | None"]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "back", "Cancel")]

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide"):
            yield Label("Submit a job", classes="question")
            with Grid(classes="form"):
                for key, label, hint in FIELDS:
                    yield Label(label)
                    yield FieldInput(placeholder=hint, id=f"f-{key}")
            yield Label("", id="error", classes="error")
            with Horizontal(classes="buttons"):
                yield Button("Submit", variant="primary", id="submit")
                yield Button("Cancel (esc)", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#f-name", Input).focus()

    def values(self) -> dict[str, str]:
        return {key: self.query_one(f"#f-{key}", Input).value for key, _l, _h in FIELDS}

    @on(Input.Submitted)
    def _submitted(self) -> None:
        self._done()

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "submit":
            self._done()
        else:
            self.dismiss(None)

    def _done(self) -> None:
        try:
            req = build_spec(self.values())
        except HybridctlError as exc:
            self.query_one("#error", Label).update(exc.message)
            return
        self.dismiss(req)

    def action_back(self) -> None:
        self.dismiss(None)
