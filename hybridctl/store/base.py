"""What every table family of the store shares: the connection and one write transaction."""

from __future__ import annotations

import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from hybridctl.store.rows import Allocation


class Tables:
    """The state the table families (`jobs` in sqlite.py, `nodes`, `cloud`, `usage`) share; `Store`
    sets it up. Not thread-safe: owned by the controller's event loop."""

    conn: sqlite3.Connection
    path: Path
    fleet_version: int
    """Bumped whenever a node's shape changes (add, remove, hardware), for caches of the fleet's shape."""

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; rolled back whole on any error."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    # ---- what one family reads of another (defined there; declared here so each file stands alone)

    def open_allocations(self) -> list[Allocation]:  # the jobs family (sqlite.py)
        raise NotImplementedError

    def _update_node(self, name: str, now: float, **fields: Any) -> None:  # the nodes family
        raise NotImplementedError
