"""The `:` command grammar (after k9s): a view alias, optionally with an argument.

`:nodes`, `:jobs`, `:gpus`, `:cloud`, `:events`, `:waste` switch views; `:node gpu01`, `:job 42` and
`:gpu gpu01/3` open one object; `:help` and `:quit` do what they say. Pure, so it is tested alone."""

from __future__ import annotations

from dataclasses import dataclass

VIEWS: dict[str, tuple[str, ...]] = {
    "fleet": ("nodes", "node", "no", "fleet", "n"),
    "queue": ("jobs", "job", "queue", "j"),
    "gpus": ("gpus", "gpu", "g"),
    "cloud": ("cloud", "c"),
    "events": ("events", "event", "ev", "audit", "e"),
    "waste": ("waste", "idle", "w"),
}
"""Each view (an app mode) and the aliases that reach it; with an argument, a singular opens one object."""
OTHER = {"help": ("help", "h", "?"), "quit": ("quit", "q", "q!", "exit")}

SUGGESTIONS = ["nodes", "jobs", "gpus", "cloud", "events", "waste", "node ", "job ", "gpu ", "help", "quit"]


@dataclass(frozen=True)
class Command:
    """What a `:` line asks for: `view` (a mode), `open` (one object: kind + arg), help or quit."""

    kind: str
    """'view', 'node', 'job', 'gpu', 'help' or 'quit'."""
    target: str = ""
    """The mode for 'view'; the object (node name, job id, 'node/index') otherwise."""


class UnknownCommand(ValueError):
    pass


def parse_command(line: str) -> Command:
    words = line.strip().lstrip(":").split()
    if not words:
        raise UnknownCommand("empty command; try :nodes, :jobs, :gpus, :cloud, :events, :waste or :help")
    head, args = words[0].lower(), words[1:]
    for kind, aliases in OTHER.items():
        if head in aliases and not args:
            return Command(kind)
    for mode, aliases in VIEWS.items():
        if head in aliases:
            if not args:
                return Command("view", mode)
            if mode in ("fleet", "queue", "gpus"):
                kind = {"fleet": "node", "queue": "job", "gpus": "gpu"}[mode]
                return Command(kind, args[0])
            raise UnknownCommand(f":{head} takes no argument")
    known = ", ".join(":" + a[0] for a in VIEWS.values())
    raise UnknownCommand(f"unknown command :{head}; known: {known}, :node NAME, :job ID, :help, :quit")
