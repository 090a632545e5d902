"""`RowTable`: a read-only table built for live data at fleet scale.

Textual's DataTable measures and stores every cell, so refreshing 10k rows every second costs
more than a core. This table keeps the screen's row objects as they are and formats only the
rows on screen, in `render_line`; the header stays put while the body scrolls. The cursor
follows a row's key across refreshes, columns the terminal is too narrow for are dropped least
important first, and a click on a header asks the screen to sort by that column."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, NamedTuple, Sequence, Union

from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual import events
from textual.binding import Binding, BindingType
from textual.geometry import Region, Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

Cell = Union[str, Text]


@dataclass(frozen=True)
class Column:
    key: str
    """Also the sort key the screen understands."""
    title: str
    width: int
    align: str = "left"
    keep: int = 5
    """Importance: when the terminal is narrow, columns with the lowest `keep` are hidden first."""
    flex: bool = False
    """Takes the width left over (at least `width`)."""


class Palette(NamedTuple):
    """Rich styles from the table's component classes (theme-aware: they follow dark/light)."""

    ok: Style
    warn: Style
    bad: Style
    dim: Style
    accent: Style


def layout(columns: Sequence[Column], width: int, hidden: frozenset[str] = frozenset()
           ) -> list[tuple[int, Column, int]]:
    """Which columns fit in `width` cells (one space between them): (index, column, width) each.
    Columns whose key is in `hidden` (nothing to show in them) are left out first."""
    chosen = [c for c in columns if c.key not in hidden]
    while chosen and sum(c.width for c in chosen) + len(chosen) - 1 > width and len(chosen) > 1:
        chosen.remove(min(chosen, key=lambda c: (c.keep, -columns.index(c))))
    spare = max(0, width - (sum(c.width for c in chosen) + len(chosen) - 1))
    out = []
    for c in chosen:
        out.append((columns.index(c), c, c.width + (spare if c.flex else 0)))
        if c.flex:
            spare = 0
    return out


class RowTable(ScrollView, can_focus=True):
    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "rowtable--header", "rowtable--cursor", "rowtable--ok", "rowtable--warn", "rowtable--bad",
        "rowtable--dim", "rowtable--accent",
    }
    DEFAULT_CSS = """
    RowTable {
        background: $surface;
        color: $foreground;
        overflow-x: hidden;
        height: 1fr;
        & > .rowtable--header { text-style: bold; background: $panel; color: $foreground; }
        & > .rowtable--cursor { background: $block-cursor-blurred-background; color: $block-cursor-blurred-foreground; }
        &:focus > .rowtable--cursor {
            background: $block-cursor-background; color: $block-cursor-foreground; text-style: $block-cursor-text-style;
        }
        & > .rowtable--ok { color: $text-success; }
        & > .rowtable--warn { color: $text-warning; }
        & > .rowtable--bad { color: $text-error; text-style: bold; }
        & > .rowtable--dim { color: $text-muted; }
        & > .rowtable--accent { color: $text-accent; }
    }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up,k", "move(-1)", "Up", show=False),
        Binding("down,j", "move(1)", "Down", show=False),
        Binding("pageup,ctrl+b", "page(-1)", "Page up", show=False),
        Binding("pagedown,ctrl+f,space", "page(1)", "Page down", show=False),
        Binding("home,g", "jump(0)", "First", show=False),
        Binding("end,G", "jump(-1)", "Last", show=False),
        Binding("enter", "select", "Open"),
    ]

    class _RowMessage(Message):
        def __init__(self, table: RowTable, row: Any) -> None:
            super().__init__()
            self.table = table
            self.row = row

        @property
        def control(self) -> RowTable:
            return self.table

    class Selected(_RowMessage):
        """Enter (or a click on the cursor row) on a row: the screen drills into it."""

    class Highlighted(_RowMessage):
        """The cursor moved to another row."""

    class HeaderClicked(Message):
        def __init__(self, table: RowTable, column: str) -> None:
            super().__init__()
            self.table = table
            self.column = column

        @property
        def control(self) -> RowTable:
            return self.table

    def __init__(
        self,
        columns: Sequence[Column],
        cells: Callable[[Any, Palette], Sequence[Cell]],
        key: Callable[[Any], str],
        *,
        empty: str = "nothing to show",
        name: str | None = None,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.columns = list(columns)
        self._cells = cells
        self._key = key
        self.rows: Sequence[Any] = []
        self._index: dict[str, int] = {}
        self.cursor = 0
        self._cursor_key: str | None = None
        self.sort_column = ""
        self.sort_reverse = False
        self.empty_text = empty
        self.hidden: frozenset[str] = frozenset()
        """Keys of columns not drawn (e.g. SM where no agent reports it); set before `set_rows`."""

    # ---- data in ---------------------------------------------------------------------------------

    def set_rows(self, rows: Sequence[Any], *, sort: tuple[str, bool] | None = None) -> None:
        """Replace the rows; the cursor stays on the same key when it is still there."""
        self.rows = rows
        self._index = {self._key(r): i for i, r in enumerate(rows)}
        if sort is not None:
            self.sort_column, self.sort_reverse = sort
        if self._cursor_key is not None and self._cursor_key in self._index:
            self.cursor = self._index[self._cursor_key]
        else:
            self.cursor = max(0, min(self.cursor, len(rows) - 1))
        new_key = self._key(rows[self.cursor]) if rows else None
        changed = new_key != self._cursor_key
        self._cursor_key = new_key
        self.virtual_size = Size(self.size.width, len(rows) + 1)
        self._reveal()
        self.refresh()
        if changed and rows:
            self.post_message(self.Highlighted(self, rows[self.cursor]))

    @property
    def selected(self) -> Any:
        return self.rows[self.cursor] if self.rows else None

    def select_key(self, key: str) -> bool:
        i = self._index.get(key)
        if i is None:
            return False
        self._move_to(i)
        return True

    # ---- keys and mouse ------------------------------------------------------------------------

    def _move_to(self, i: int) -> None:
        if not self.rows:
            return
        i = max(0, min(i, len(self.rows) - 1))
        moved = i != self.cursor
        old, top = self.cursor, int(self.scroll_y)
        self.cursor = i
        self._cursor_key = self._key(self.rows[i])
        self._reveal()
        if int(self.scroll_y) == top:
            # Only the two rows whose cursor style changed are redrawn: a key press costs two
            # lines, not a screenful, however large the table.
            w = self.size.width
            self.refresh(Region(0, old - top + 1, w, 1), Region(0, i - top + 1, w, 1))
        else:
            self.refresh()
        if moved:
            self.post_message(self.Highlighted(self, self.rows[i]))

    def _reveal(self) -> None:
        body = max(1, self.size.height - 1)
        top = int(self.scroll_y)
        if self.cursor < top:
            self.scroll_to(y=self.cursor, animate=False, immediate=True)
        elif self.cursor >= top + body:
            self.scroll_to(y=self.cursor - body + 1, animate=False, immediate=True)

    def action_move(self, step: int) -> None:
        self._move_to(self.cursor + step)

    def action_page(self, direction: int) -> None:
        self._move_to(self.cursor + direction * max(1, self.size.height - 2))

    def action_jump(self, where: int) -> None:
        self._move_to(len(self.rows) - 1 if where < 0 else 0)

    def action_select(self) -> None:
        if self.rows:
            self.post_message(self.Selected(self, self.rows[self.cursor]))

    def on_click(self, event: events.Click) -> None:
        offset = event.get_content_offset(self)
        if offset is None:
            return
        if offset.y == 0:
            x = 0
            for _i, col, w in layout(self.columns, self.size.width):
                if x <= offset.x < x + w + 1:
                    self.post_message(self.HeaderClicked(self, col.key))
                    return
                x += w + 1
            return
        i = int(self.scroll_y) + offset.y - 1
        if 0 <= i < len(self.rows):
            if i == self.cursor:
                self.post_message(self.Selected(self, self.rows[i]))
            else:
                self._move_to(i)

    def on_resize(self, event: events.Resize) -> None:
        self.virtual_size = Size(self.size.width, len(self.rows) + 1)
        self._reveal()

    # ---- drawing -----------------------------------------------------------------------------

    def palette(self) -> Palette:
        s = self.get_component_rich_style
        return Palette(s("rowtable--ok"), s("rowtable--warn"), s("rowtable--bad"), s("rowtable--dim"),
                       s("rowtable--accent"))

    def render_line(self, y: int) -> Strip:
        width = self.size.width
        base = self.rich_style
        cols = layout(self.columns, width, self.hidden)
        if y == 0:
            titles: list[Cell] = []
            for _i, c, _w in cols:
                arrow = ("▼" if self.sort_reverse else "▲") if c.key == self.sort_column else ""
                titles.append(c.title + arrow)
            cols = [(n, c, w) for n, (_i, c, w) in enumerate(cols)]
            return self._strip(titles, cols, width, base + self.get_component_rich_style("rowtable--header"))
        i = int(self.scroll_y) + y - 1
        if not self.rows:
            if y == 1:
                return self._strip([Text(self.empty_text)], [(0, Column("", "", width), width)], width,
                                   base + self.get_component_rich_style("rowtable--dim"))
            return Strip.blank(width, base)
        if i >= len(self.rows):
            return Strip.blank(width, base)
        cells = self._cells(self.rows[i], self.palette())
        style = base + self.get_component_rich_style("rowtable--cursor") if i == self.cursor else None
        return self._strip(cells, cols, width, base, over=style)

    def _strip(self, cells: Sequence[Cell], cols: list[tuple[int, Column, int]], width: int, base: Style,
               over: Style | None = None) -> Strip:
        line = Text(no_wrap=True, end="")
        for n, (i, col, w) in enumerate(cols):
            cell = cells[i] if i < len(cells) else ""
            t = Text(cell) if isinstance(cell, str) else cell.copy()
            t.truncate(w, overflow="ellipsis")
            t.align("right" if col.align == "right" else "left", w)
            if n:
                line.append(" ")
            line.append_text(t)
        segments = list(line.render(self.app.console))
        segments = list(Segment.apply_style(segments, base, over))
        return Strip(segments).adjust_cell_length(width, base + over if over else base)
