"""`scheduler.preempt_grace`: the grace of a job preempted on an on-prem node (what the fleet's
stop carries is tested in tests/unit/control/test_fleet.py); a bad value stops config loading
(exit 2) naming the file, the key, the value and what is accepted."""

from __future__ import annotations

from pathlib import Path

import pytest

from hybridctl import config


def _load(tmp_path: Path, value: object) -> config.Settings:
    path = tmp_path / "c.yaml"
    path.write_text(f"scheduler:\n  preempt_grace: {value}\n")
    return config.load(path, env={})


def test_the_default_is_the_cloud_preemption_grace_and_a_lab_may_set_any_from_0_to_a_day(tmp_path: Path) -> None:
    defaults = config.load(None, env={})
    assert defaults.scheduler.preempt_grace == defaults.cloud.preemption_grace == 30.0
    assert [_load(tmp_path, v).scheduler.preempt_grace for v in (0, 120, 86400)] == [0.0, 120.0, 86400.0]
    assert config.load(None, env={"HYBRIDCTL_SCHEDULER__PREEMPT_GRACE": "90"}).scheduler.preempt_grace == 90.0


@pytest.mark.parametrize("value, shown", [(-1, "-1"), (86401, "86401"), (".inf", "inf"), (".nan", "nan")])
def test_a_bad_grace_exits_2_naming_file_key_value_and_what_is_accepted(
        tmp_path: Path, value: object, shown: str) -> None:
    with pytest.raises(config.ConfigError) as e:
        _load(tmp_path, value)
    assert e.value.exit_code == 2
    msg = str(e.value)
    assert "scheduler.preempt_grace" in msg and shown in msg and "seconds from 0 to 86400" in msg and "c.yaml" in msg, msg


def test_a_grace_that_is_not_a_number_exits_2_naming_the_key_and_value(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError) as e:
        _load(tmp_path, "soon")
    assert e.value.exit_code == 2 and "scheduler.preempt_grace: 'soon' is not a number" in str(e.value)
