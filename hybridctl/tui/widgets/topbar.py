"""The two lines above every view: where you are (breadcrumbs) with who you are and the
connection, and the banner that appears while the controller is unreachable."""

from __future__ import annotations

from rich.text import Text
from textual.widget import Widget
from textual.widgets import Static


class TopBar(Widget):
    """`hybridctl ▸ Fleet ▸ gpu01 ▸ GPU 3` on the left; user, mode and clock on the right."""

    DEFAULT_CSS = """
    TopBar { height: 1; }
    """

    def __init__(self) -> None:
        super().__init__()
        self.crumbs: list[str] = []
        self.status = ""

    def show(self, crumbs: list[str], status: str) -> None:
        if (crumbs, status) != (self.crumbs, self.status):
            self.crumbs, self.status = crumbs, status
            self.refresh()

    def render(self) -> Text:
        left = Text("hybridctl", style="bold")
        for c in self.crumbs:
            left.append(" ▸ ")
            left.append(c, style="bold")
        right = Text(self.status)
        gap = max(1, self.size.width - left.cell_len - right.cell_len)
        left.append(" " * gap)
        left.append_text(right)
        left.truncate(self.size.width, overflow="ellipsis")
        return left


class Banner(Static):
    """Shown only while the controller does not answer (or cannot list the fleet); says since when
    and that we keep trying. The text is shown as it is: an error may hold square brackets."""

    DEFAULT_CSS = """
    Banner { height: auto; display: none; }
    Banner.-shown { display: block; }
    """

    def show(self, text: str) -> None:
        self.set_class(bool(text), "-shown")
        if text:
            self.update(Text(text))
