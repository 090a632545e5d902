"""`deadline:` (an ISO time or a duration after submit): parsed, stored with the spec, shown with
whether it is at risk; bad values exit 2 naming the field."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hybridctl.core.errors import SpecError
from hybridctl.core.model import spec_from_dict
from hybridctl.core.spec import parse_deadline, parse_spec

NOW = 1_800_000_000.0  # 2027-01-15 08:00 UTC
REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("value", "expected"), [
    ("6h", NOW + 6 * 3600), ("+90m", NOW + 5400), ("1d12h", NOW + 36 * 3600), (30, NOW + 1800),
    ("2027-01-16T00:00", 1_800_057_600.0), ("2027-01-16T01:00:00+01:00", 1_800_057_600.0),
    ("2027-01-16T00:00Z", 1_800_057_600.0),
])
def test_a_deadline_is_an_absolute_time_or_a_duration_after_submit(value: object, expected: float) -> None:
    assert parse_deadline(value, now=NOW) == expected


def test_yaml_timestamps_are_read_as_utc_unless_they_say() -> None:
    import datetime as dt

    assert parse_deadline(dt.datetime(2027, 1, 16), now=NOW) == 1_800_057_600.0
    assert parse_deadline(dt.date(2027, 1, 16), now=NOW) == 1_800_057_600.0


@pytest.mark.parametrize("value", ["soon", "2027-13-01", "", True, -5, "0h", [1]])
def test_bad_deadlines_name_the_field_the_value_and_what_is_accepted(value: object) -> None:
    with pytest.raises(SpecError) as e:
        parse_spec({"run": "x", "deadline": value}, now=NOW)
    text = str(e.value)
    assert text.startswith("deadline: ") and "ISO 8601" in text and "duration after submit" in text


def test_a_deadline_already_past_is_refused_at_submit_only() -> None:
    with pytest.raises(SpecError, match="deadline: '2020-01-01T00:00' has already passed"):
        parse_spec({"run": "x", "deadline": "2020-01-01T00:00"}, now=NOW)
    spec, _ = parse_spec({"run": "x", "deadline": "2020-01-01T00:00"})  # checking only (no submit time)
    assert spec.deadline == 1_577_836_800.0


def test_the_deadline_survives_the_stored_spec() -> None:
    spec, _ = parse_spec({"run": "x", "deadline": "6h"}, now=NOW)
    assert spec_from_dict(spec.to_dict()).deadline == NOW + 6 * 3600
    plain, _ = parse_spec({"run": "x"}, now=NOW)
    assert "deadline" not in plain.to_dict() and spec_from_dict(plain.to_dict()).deadline is None


def test_submit_deadline_flag_bad_value_exits_2_naming_the_flag(tmp_path: Path) -> None:
    env = {**os.environ, "HYBRIDCTL_HOME": str(tmp_path), "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-m", "hybridctl.cli.main", "submit", "--dry-run", "--deadline", "tomorrow",
                        "--", "true"], capture_output=True, text=True, env=env, timeout=60, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "--deadline: 'tomorrow' is not valid" in r.stderr
    r = subprocess.run([sys.executable, "-m", "hybridctl.cli.main", "submit", "--dry-run", "--deadline", "6h",
                        "--", "true"], capture_output=True, text=True, env=env, timeout=60, cwd=tmp_path)
    assert r.returncode == 0 and "deadline: 6h" in r.stdout


def test_the_controller_stores_the_deadline_and_show_says_whether_it_is_at_risk(tmp_path: Path) -> None:
    from hybridctl.cli.main import _deadline_text
    from hybridctl.config import Settings
    from hybridctl.control.service import Controller
    from hybridctl.store.sqlite import Store
    from tests.unit.controller_kit import ALICE, Clock, submit

    clock = Clock()
    store = Store(tmp_path / "ctl.db")
    try:
        ctl = Controller(store, Settings(home=tmp_path), clock)
        ok = submit(ctl, ALICE, deadline="6h", time_limit="2h")
        late = submit(ctl, ALICE, deadline="1h", time_limit="2h")
        unknown = submit(ctl, ALICE, deadline="1h")
        job = ctl.op_show(ALICE, ok)
        assert job["spec"]["deadline"] == clock.t + 6 * 3600
        assert _deadline_text(job, job["spec"]["deadline"], clock.t).endswith("on track (4:00:00 to spare at its time limit)")
        job = ctl.op_show(ALICE, late)
        assert "AT RISK: its time limit ends 1:00:00 after it" in _deadline_text(job, job["spec"]["deadline"], clock.t)
        job = ctl.op_show(ALICE, unknown)
        assert _deadline_text(job, job["spec"]["deadline"], clock.t).endswith("run time unknown (no time limit)")
        with pytest.raises(SpecError, match="deadline: '2020-01-01' has already passed"):
            submit(ctl, ALICE, deadline="2020-01-01")
        done = dict(job, tasks=[dict(job["tasks"][0], state="SUCCEEDED", ended_at=clock.t + 60)])
        assert _deadline_text(done, job["spec"]["deadline"], clock.t + 120).endswith(": met")
    finally:
        store.close()
