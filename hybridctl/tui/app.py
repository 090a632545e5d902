"""`HybridApp`: the k9s-style shell around the screens — views as modes (`:nodes`, `:jobs`, ...),
one 1 Hz refresh that reads what the visible screen needs, the reconnect banner, and every action
(`act`: the controller's refusal shown as it said it). Screens see it only as a `screens.base.Host`."""

from __future__ import annotations

import asyncio
import functools
import signal
import time
from typing import IO, Any, Callable, ClassVar, Sequence

from textual import on, work
from textual.app import App
from textual.binding import Binding, BindingType
from textual.css.query import NoMatches
from textual.driver import Driver
from textual.worker import Worker, WorkerState

from hybridctl.core.errors import ControllerUnavailable, HybridctlError
from hybridctl.tui.commands import UnknownCommand, parse_command
from hybridctl.tui.data import Api, Request, State, fetch
from hybridctl.tui.history import History
from hybridctl.tui.messages import ActionDone, ControllerLost, Polled
from hybridctl.tui.screens.base import ViewScreen
from hybridctl.tui.screens.cloud import CloudScreen
from hybridctl.tui.screens.events import EventsScreen
from hybridctl.tui.screens.fleet import FleetScreen
from hybridctl.tui.screens.gpus import GpusScreen
from hybridctl.tui.screens.queue import QueueScreen
from hybridctl.tui.screens.waste import WasteScreen

NODES = Request.of("nodes", "nodes")
PING = Request.of("ping", "ping")


class _HungUpTerminal:
    """The terminal as Textual's writer thread writes to it, where a write to a terminal that has
    hung up (EIO: the SSH session dropped, the window closed) is dropped instead of raised.

    Textual's writer thread dies on the first failed write, and its queue holds only 30: the next
    repaints fill it and the event loop then blocks in `Queue.put` for good, deaf to SIGTERM and
    SIGHUP (Textual issue 6692 describes the same hang reached through `suspend`). A closed
    `scripts/demo` window left its lab running that way."""

    def __init__(self, file: IO[str]) -> None:
        self._file = file

    def write(self, text: str) -> int:
        try:
            return self._file.write(text)
        except (OSError, ValueError):  # nobody is there to read it
            return len(text)

    def flush(self) -> None:
        try:
            self._file.flush()
        except (OSError, ValueError):
            pass

    def fileno(self) -> int:
        return self._file.fileno()

    def isatty(self) -> bool:
        return True


class HybridApp(App[None]):
    CSS_PATH = "app.tcss"
    TITLE = "hybridctl"
    MODES: ClassVar[dict[str, Any]] = {
        "fleet": FleetScreen, "queue": QueueScreen, "gpus": GpusScreen, "cloud": CloudScreen, "events": EventsScreen,
        "waste": WasteScreen,
    }
    DEFAULT_MODE = "fleet"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+r", "refresh", "Refresh", show=False),
        Binding("ctrl+q", "quit", "Quit", show=False),
        # Ctrl-C quits from anywhere, dialogs and inputs included, as in k9s and every terminal
        # program (Textual's default only says "press Ctrl+Q"); priority, or an Input's copy wins.
        Binding("ctrl+c", "quit", "Quit", show=False, priority=True),
    ]

    def __init__(
        self,
        api: Api,
        *,
        readonly: bool = False,
        interval: float = 1.0,
        clock: Callable[[], float] = time.time,
        mode: str = "fleet",
        cursor_blink: bool = True,
        history: int = 300,
        exit_on: Sequence[signal.Signals] = (),
    ) -> None:
        super().__init__()
        self.api = api
        self.readonly = readonly
        self.interval = interval
        self.clock = clock
        self.start_mode = mode
        self.cursor_blink = cursor_blink
        self.state = State(history=History(history))
        self._polling = False
        self._poll_again = False
        self._ticks = 0
        self.polls = 0
        """Refreshes handled so far (tests and the benchmark wait on it)."""
        self.exit_on = tuple(exit_on)
        """Signals that end the session the way `q` does (`main` passes SIGTERM and SIGHUP)."""
        self.signalled = False
        """One of `exit_on` arrived while no event-loop handler was installed (`note_signal`)."""

    def get_driver_class(self) -> type[Driver]:
        base = super().get_driver_class()
        try:
            from textual.drivers.linux_driver import LinuxDriver
        except ImportError:  # Windows: its driver writes through console calls
            return base
        if not issubclass(base, LinuxDriver):
            return base

        class HangupSafeDriver(base):  # type: ignore[valid-type,misc]
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                file = getattr(self, "_file", None)
                if file is not None:  # where Textual's writer thread writes (sys.__stderr__)
                    self._file = _HungUpTerminal(file)

        return HangupSafeDriver

    def note_signal(self, *_: Any) -> None:
        """The Python-level handler for `exit_on` before mount and after unmount: it only notes
        the signal. Raising there (a KeyboardInterrupt, as the demo's own handler does) would
        land anywhere in Textual, e.g. inside its writer queue's lock, and hang its shutdown."""
        self.signalled = True

    def on_mount(self) -> None:
        # A signal through the event loop, not a Python handler: the app then exits from its own
        # task, restores the terminal and returns from run(), so the caller's cleanup runs (the
        # demo's lab would otherwise outlive a closed terminal window).
        loop = asyncio.get_running_loop()
        for sig in self.exit_on:
            loop.add_signal_handler(sig, self.exit)
        if self.signalled:  # the terminal closed while the app was starting
            self.exit()
        if self.start_mode != self.DEFAULT_MODE:
            self.switch_mode(self.start_mode)
        self.set_interval(self.interval, self.poll_now)
        self.poll_now()

    def on_unmount(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in self.exit_on:
            loop.remove_signal_handler(sig)  # leaves SIG_DFL: note, don't die, while shutting down
            signal.signal(sig, self.note_signal)
        close = getattr(self.api, "close", None)
        if close is not None:
            close()

    # ---- refresh -----------------------------------------------------------------------------------

    def _view(self) -> ViewScreen | None:
        for s in reversed(self.screen_stack):
            if isinstance(s, ViewScreen):
                return s
        return None

    def poll_now(self) -> None:
        """Refresh now; if a refresh is in flight, once more right after it (never two at once)."""
        if self._polling:
            self._poll_again = True
            return
        view = self._view()
        self._ticks += 1
        try:
            wanted = view.requests() if view and view.is_mounted else []
        except NoMatches:  # the view is still being composed (or torn down): read the basics only
            wanted = []
        due = [r for r in wanted if r.every <= 1 or self._ticks % r.every == 0 or r.key not in self.state.results]
        reqs = ([] if self.state.identity else [PING]) + [NODES] + due
        self._polling = True
        self._poll(reqs)

    @work(thread=True, group="poll", exit_on_error=False)
    def _poll(self, requests: list[Request]) -> None:
        try:
            results = fetch(self.api, requests)
        except ControllerUnavailable as exc:
            self.post_message(ControllerLost(exc.message))
            return
        self.post_message(Polled(results, self.clock()))

    @on(Polled)
    def _polled(self, msg: Polled) -> None:
        st = self.state
        back = not st.connected and st.lost_at is not None
        st.connected, st.error, st.lost_at, st.polled_at = True, "", None, msg.at
        if isinstance(msg.results.get("ping"), dict):
            st.identity = msg.results["ping"]
        # Log replies are keyed by offset: drop the old ones so a reply is applied once.
        kept = {k: v for k, v in st.results.items() if not k.startswith("logs:")}
        got = dict(msg.results)
        nodes = got.get("nodes")
        if isinstance(nodes, HybridctlError):
            # Every screen reads the fleet: a refused read keeps the last list on screen, with
            # the reason in the banner, rather than emptying every table.
            st.fleet_error = nodes.message
            if isinstance(kept.get("nodes"), list):
                del got["nodes"]
        elif nodes is not None:
            st.fleet_error, st.fleet_at = "", msg.at
        st.results = {**kept, **got}
        if isinstance(nodes, list):
            st.history.add(nodes)
            if self.polls % 60 == 0:
                st.history.forget({n["name"] for n in nodes})
        self.polls += 1
        if back:
            self.notify("Reconnected to the controller.", title="Controller back", timeout=4)
        self._show()

    @on(ControllerLost)
    def _lost(self, msg: ControllerLost) -> None:
        st = self.state
        st.connected, st.error, st.identity = False, msg.error, {}
        st.lost_at = st.lost_at or self.clock()
        self.polls += 1
        self._show()

    def _show(self) -> None:
        view = self._view()
        if view is not None and view.is_mounted:
            try:
                view.update_view(self.state)
            except NoMatches:
                pass  # the view is still being composed (or torn down); the next refresh shows it

    @on(Worker.StateChanged)
    def _worker_changed(self, event: Worker.StateChanged) -> None:
        w = event.worker
        if w.state not in (WorkerState.SUCCESS, WorkerState.ERROR, WorkerState.CANCELLED):
            return
        if w.group == "poll":
            self._polling = False
            if self._poll_again:
                self._poll_again = False
                self.poll_now()
        if w.state is WorkerState.ERROR:
            self._report(w.error)

    def _report(self, exc: BaseException | None) -> None:
        if isinstance(exc, HybridctlError):
            title = exc.title or type(exc).__name__
            self.notify(exc.message, title="Denied" if title == "PermissionDenied" else title,
                        severity="error", timeout=8)
        else:
            self.notify(f"internal error in the TUI: {exc!r}", title="Bug", severity="error", timeout=8)

    def action_refresh(self) -> None:
        self.poll_now()

    # ---- actions -----------------------------------------------------------------------------------

    def act(self, op: str, args: dict[str, Any], done: Callable[[Any], str]) -> None:
        """Send one action on the action lane; success is announced, a refusal shown as an error."""
        if self.readonly:
            self.notify("read-only session (--readonly): actions are disabled", severity="warning")
            return
        self._act(op, args, done)

    @work(thread=True, group="action", exit_on_error=False)
    def _act(self, op: str, args: dict[str, Any], done: Callable[[Any], str]) -> None:
        result = self.api.call(op, args, lane="action")
        self.post_message(ActionDone(op, result, done(result)))

    @on(ActionDone)
    def _done(self, msg: ActionDone) -> None:
        self.notify(msg.text, title="Done", timeout=4)
        self.poll_now()

    # ---- `:` commands ------------------------------------------------------------------------------

    def run_command(self, line: str) -> None:
        try:
            cmd = parse_command(line)
        except UnknownCommand as exc:
            self.notify(str(exc), title="Unknown command", severity="error")
            return
        if cmd.kind == "quit":
            self.exit()
        elif cmd.kind == "help":
            view = self._view()
            if view is not None:
                view.action_help()
        elif cmd.kind == "view":
            self.switch_mode(cmd.target)
        elif cmd.kind == "node":
            from hybridctl.tui.screens.node import NodeScreen

            self.push_screen(NodeScreen(cmd.target))
        elif cmd.kind == "job":
            from hybridctl.tui.screens.job import JobScreen

            self.push_screen(JobScreen(cmd.target))
        elif cmd.kind == "gpu":
            from hybridctl.tui.screens.gpu import GpuScreen

            node, _, index = cmd.target.rpartition("/")
            if not node or not index.isdigit():
                self.notify(f"{cmd.target!r}: name a GPU as NODE/INDEX, e.g. gpu01/3", severity="error")
                return
            self.push_screen(GpuScreen(node, int(index)))
        self.poll_now()

    @functools.cached_property
    def user_names(self) -> Callable[[int], str]:
        from hybridctl.control.identity import user_name

        return functools.lru_cache(maxsize=1024)(user_name)


def main(readonly: bool = False, interval: float = 1.0) -> int:
    """`hybridctl` / `hybridctl tui` / the demo: run the TUI against the controller named by
    HYBRIDCTL_SOCKET until `q`, `:q` or Ctrl-C, or SIGTERM/SIGHUP (a closed terminal)."""
    from hybridctl import paths
    from hybridctl.tui.data import SocketApi

    api = SocketApi(paths.socket_path())
    app = HybridApp(api, readonly=readonly, interval=interval, exit_on=(signal.SIGTERM, signal.SIGHUP))
    # The caller's handlers (the demo's raise KeyboardInterrupt) come back only once Textual has
    # finished: until then a signal is noted (before mount, after unmount) or exits the app.
    saved = {sig: signal.signal(sig, app.note_signal) for sig in app.exit_on}
    try:
        app.run()
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
        api.close()
    return 0
