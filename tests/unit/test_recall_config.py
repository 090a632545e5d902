"""`cloud.burst.recall`: on by default, mapped to the burst policy's `Limits.recall`; anything but
true/false is refused at load (exit 2) naming the key, the value and what is accepted."""

from __future__ import annotations

from pathlib import Path

import pytest

from hybridctl import config
from hybridctl.control.budget import limits


def _load(tmp_path: Path, value: str) -> config.Settings:
    path = tmp_path / "c.yaml"
    path.write_text(f"cloud:\n  burst:\n    recall: {value}\n")
    return config.load(path, env={})


def test_recall_is_on_by_default_and_the_policy_gets_what_the_lab_sets(tmp_path: Path) -> None:
    assert config.load(None, env={}).cloud.burst.recall is True
    assert limits(config.load(None, env={})).recall is True
    assert limits(_load(tmp_path, "false")).recall is False
    assert limits(_load(tmp_path, "true")).recall is True
    assert limits(config.load(None, env={"HYBRIDCTL_CLOUD__BURST__RECALL": "false"})).recall is False


@pytest.mark.parametrize("value, shown", [("yes please", "'yes please'"), ("1", "1"), ("'true'", "'true'"),
                                          ("null", "None"), ("[true]", "[True]")])
def test_a_recall_that_is_not_a_bool_exits_2_naming_key_value_and_what_is_accepted(
        tmp_path: Path, value: str, shown: str) -> None:
    with pytest.raises(config.ConfigError) as e:
        _load(tmp_path, value)
    assert e.value.exit_code == 2
    msg = str(e.value)
    assert "cloud.burst.recall" in msg and shown in msg and "true/false" in msg and "c.yaml" in msg
