"""The telemetry history's readers (`eff`, op `history`, `usage`) open the file per request: they
must not load every series name ever stored (one per rank key, never deleted: a million after a
busy year took ~1.8 s and ~150 MB per request, each of which any user may send)."""

from __future__ import annotations

from pathlib import Path

from hybridctl.store import telemetry
from hybridctl.store.telemetry import History


def test_a_reader_loads_no_series_names_and_still_reads_points(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "telemetry.db"
    writer = History(path)
    writer.add({"n1": {"time": 1000.0, "gpus": [], "jobs": {f"{i}.a0.r0": {"rss_mb": i} for i in range(500)}}}, 1000.0)
    writer.close()
    opened: list[History] = []
    real = History.__init__

    def spy(self: History, *args: object, **kwargs: object) -> None:
        real(self, *args, **kwargs)
        opened.append(self)

    monkeypatch.setattr(History, "__init__", spy)
    report = telemetry.history_report(path, tmp_path / "none.db", None, 0, "n1", 0.0, 2000.0)
    assert report["node"] == "n1"
    telemetry.usage_report(path, 0.0)
    assert len(opened) == 2 and all(h._ids == {} for h in opened)
    reader = History(path, reader=True)
    try:
        assert reader._ids == {} and [p.rss_mb for p in reader.job_points("7.a0.r0", 0, 2000)] == [7]
    finally:
        reader.close()
