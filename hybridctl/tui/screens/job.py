"""Job: the spec, its tasks, its efficiency (the `eff` record and sparklines of its GPU use and
logged metrics), the event timeline and a live tail of its log (`t` switches stdout/stderr, Enter
or `l` opens the log full screen); `c` cancels, `p` changes priority."""

from __future__ import annotations

from typing import Any, ClassVar, Iterable, Sequence

from rich.text import Text
from textual import on
from textual.binding import Binding, BindingType
from textual.widget import Widget
from textual.widgets import Static

from hybridctl.fmt import gpus_text
from hybridctl.core.errors import HybridctlError
from hybridctl.tui import cells
from hybridctl.tui.data import Request, State
from hybridctl.tui.screens.base import JOB_STATE_STYLE, ViewScreen
from hybridctl.tui.widgets.effpanel import EffPanel, eff_requests
from hybridctl.tui.widgets.logtail import LogTail
from hybridctl.tui.widgets.table import Cell, Column, Palette, RowTable

EVENT_COLUMNS = [
    Column("time", "TIME", 14, keep=9),
    Column("task", "TASK", 4, align="right", keep=3),
    Column("change", "CHANGE", 22, keep=8),
    Column("by", "BY", 10, keep=5),
    Column("reason", "REASON", 12, keep=6, flex=True),
]


def event_cells(e: dict[str, Any], pal: Palette) -> Sequence[Cell]:
    change = Text(f"{e['from']} → " if e.get("from") else "")
    change.append(str(e["to"]), getattr(pal, JOB_STATE_STYLE.get(str(e["to"]), "dim")))
    return [cells.stamp(e["time"]), "" if not e.get("task") else str(e["task"]), change, e.get("by") or "",
            e.get("reason") or ""]


def spec_text(job: dict[str, Any], now: float) -> Text:
    s = job.get("spec") or {}
    r = s.get("resources") or {}
    t = Text()
    t.append(f"Job {job['id']}", "bold")
    if job.get("name"):
        t.append(f" ({job['name']})")
    t.append(f" · {job['user']}/{job['group']} · priority {job['priority']} · submitted {cells.stamp(job['submitted_at'])}")
    tasks = job.get("tasks") or []
    res = f"{gpus_text(r.get('gpus', 0), r.get('gpu_type'), s.get('num_nodes', 1))} GPU, {r.get('cpus', 0):g} CPU"
    if r.get("alternatives"):  # accelerator candidates, and the one the current attempt took
        sep = " > " if r.get("ordered") else " | "
        res = sep.join(f"{gt}:{n}" if gt else str(n) for gt, n in r["alternatives"]) + f" GPU, {r.get('cpus', 0):g} CPU"
        taken = sorted({k["gpu_type"] for k in tasks if k.get("gpu_type")})
        res += f" (took {', '.join(taken)})" if taken else " (none taken yet)"
    if r.get("memory_mb"):
        res += f", {cells.mib(r['memory_mb'])} RAM"
    t.append(f"\nresources {res} · placement {s.get('placement', 'any')} · max restarts {s.get('max_restarts', 0)}")
    if s.get("time_limit"):
        t.append(f" · time limit {cells.duration(s['time_limit'])}")
    if job.get("array"):
        t.append(f" · array {job['array']}")
    if len(tasks) == 1:
        k = tasks[0]
        t.append("\nstate ")
        t.append(k["state"], "bold")
        if k.get("nodes"):
            t.append(f" on {k['nodes']} GPUs [{k.get('gpu_ids') or ''}]")
        if k.get("started_at"):
            t.append(f" · running for {cells.duration((k.get('ended_at') or now) - k['started_at'])}")
        t.append(f" · attempt {k.get('attempt', 0)}")
        if k.get("exit_code") is not None:
            t.append(f" · exit {k['exit_code']}")
        if k.get("reason"):
            t.append(f" · {k['reason']}")
        if k.get("idle_s") is not None:
            t.append(f" · IDLE {cells.duration(k['idle_s'])}", "bold red")
    else:
        counts: dict[str, int] = {}
        for k in tasks:
            counts[k["state"]] = counts.get(k["state"], 0) + 1
        t.append(f"\n{len(tasks)} tasks: " + ", ".join(f"{n} {st.lower()}" for st, n in sorted(counts.items())))
    recovered = [k for k in tasks if k.get("recoveries")]
    if recovered or job.get("runtime"):
        t.append("\n")
    if recovered:
        causes: dict[str, int] = {}
        for k in recovered:
            for cause, n in (k.get("recovery_causes") or {}).items():
                causes[cause] = causes.get(cause, 0) + int(n)
        why = ", ".join(f"{c.replace('_', ' ')} {n}" for c, n in sorted(causes.items()))
        t.append(f"recoveries {sum(int(k['recoveries']) for k in recovered)}" + (f" ({why})" if why else ""))
    if job.get("runtime"):
        t.append(f"{' · ' if recovered else ''}runtime estimate: {job['runtime']}")
    if job.get("earlier_run"):  # what the burst policy learnt from its stopped attempts (cloud.burst.lindy)
        t.append(f"\n{job['earlier_run']['text']}")
    if job.get("preemptible_by"):  # a scheduler rule may stop it: say so before it does
        t.append(f"\npreemptible: {job['preemptible_by']}")
    if job.get("priority_boost"):
        t.append(f"\npriority +{job['priority_boost']}: a job over several nodes (scheduler.multi_node_priority)")
    run = str(s.get("run") or "").strip().replace("\n", " ⏎ ")
    t.append(f"\nrun {run}")
    return t


class JobScreen(ViewScreen):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("t", "toggle_stream", "stdout/err"),
        Binding("l", "logs", "Logs"),
        Binding("c", "cancel", "Cancel"),
        Binding("p", "priority", "Priority"),
    ]
    filterable = False

    def __init__(self, job: str) -> None:
        super().__init__()
        self.job = job
        self.crumb = f"Job {job}"  # type: ignore[misc]
        self.record: dict[str, Any] | None = None

    def body(self) -> Iterable[Widget]:
        yield Static("loading…", id="spec", classes="summary")
        yield EffPanel(id="eff")
        yield RowTable(EVENT_COLUMNS, event_cells, key=lambda e: f"{e['time']}{e['to']}{e.get('task')}",
                       empty="no events", id="events")
        yield LogTail(self.job)

    def requests(self) -> list[Request]:
        return [Request.of(f"show:{self.job}", "show", job=self.job), *eff_requests(self.job),
                self.query_one(LogTail).request()]

    def update_view(self, state: State) -> None:
        super().update_view(state)
        got = state.get(f"show:{self.job}")
        if isinstance(got, HybridctlError):
            self.query_one("#spec", Static).update(Text(got.message, "bold"))
            return
        if got is None:
            return
        self.record = got
        self.query_one("#spec", Static).update(spec_text(got, self.now()))
        names = self.host.user_names
        events = [{**e, "by": "controller" if e.get("actor_uid") is None else names(e["actor_uid"])}
                  for e in reversed(got.get("events") or [])]
        self.query_one("#events", RowTable).set_rows(events)
        self.query_one(EffPanel).show(state.get(f"eff:{self.job}"), state.get(f"history:{self.job}"))
        self.query_one(LogTail).apply(state.results)

    @on(RowTable.Selected, "#events")
    def _selected(self) -> None:
        self.action_logs()

    def action_toggle_stream(self) -> None:
        self.query_one(LogTail).toggle()
        self.host.poll_now()

    def action_logs(self) -> None:
        from hybridctl.tui.screens.logs import LogScreen

        self.app.push_screen(LogScreen(self.job, self.query_one(LogTail).stream))

    def action_cancel(self) -> None:
        rec = self.record or {}
        ask_cancel(self, self.job, f"{rec.get('name') or 'unnamed'}, {rec.get('user', '?')}")

    def action_priority(self) -> None:
        ask_priority(self, self.job.split("_")[0], int((self.record or {}).get("priority") or 0))


# ---- the job actions (this screen and the queue view offer them) ---------------------------------


def ask_cancel(view: ViewScreen, job: str, what: str) -> None:
    from hybridctl.tui.screens.confirm import Confirm

    host = view.host

    def answered(yes: bool | None) -> None:
        if yes:
            host.act("cancel", {"jobs": [job]}, cancel_text)

    if not host.readonly:
        view.app.push_screen(Confirm(f"Cancel job {job} ({what})?", "Cancel job"), answered)


def ask_priority(view: ViewScreen, job: str, current: int) -> None:
    from hybridctl.tui.screens.priority import PriorityDialog

    host = view.host

    def answered(value: int | None) -> None:
        if value is not None:
            host.act("priority", {"job": job, "priority": value}, lambda r: f"job {r['id']}: priority {r['priority']}")

    if not host.readonly:
        view.app.push_screen(PriorityDialog(job, current), answered)


def cancel_text(result: dict[str, Any]) -> str:
    text = "cancelled " + " ".join(result.get("cancelled") or []) if result.get("cancelled") else "nothing cancelled"
    if result.get("skipped"):
        text += "; already finished: " + ", ".join(result["skipped"])
    return text
