"""`cloud.burst.lindy`, `unknown_risk`, `recall_min` and `recall_max_loss`: the burst policy's
`Limits.lindy`, `unknown_risk_s`, `recall_min_s` and `recall_max_loss` as the lab sets them; a bad
value stops config loading (exit 2) naming the file, the key, the value and what is accepted."""

from __future__ import annotations

from pathlib import Path

import pytest

from hybridctl import config
from hybridctl.control.budget import limits


def _load(tmp_path: Path, key: str, value: object) -> config.Settings:
    path = tmp_path / "c.yaml"
    path.write_text(f"cloud:\n  burst:\n    {key}: {value}\n")
    return config.load(path, env={})


def test_the_defaults_are_the_policys_own() -> None:
    from hybridctl.core.burst import Limits

    got = limits(config.load(None, env={}))
    assert (got.lindy, got.unknown_risk_s, got.recall_min_s, got.recall_max_loss) == (2.0, 0.0, 3600.0, 0.1)
    assert got.learn_unknown and Limits().learn_unknown
    plain = Limits()
    assert (plain.lindy, plain.unknown_risk_s, plain.recall_min_s, plain.recall_max_loss) == (2.0, 0.0, 3600.0, 0.1)


@pytest.mark.parametrize("key, value, field, want", [
    ("lindy", 0, "lindy", 0.0),
    ("lindy", 1.5, "lindy", 1.5),
    ("lindy", 100, "lindy", 100.0),
    ("unknown_risk", 86400, "unknown_risk_s", 86400.0),
    ("recall_min", 0, "recall_min_s", 0.0),
    ("recall_min", 7200, "recall_min_s", 7200.0),
    ("recall_max_loss", 0.25, "recall_max_loss", 0.25),
    ("recall_max_loss", 1, "recall_max_loss", 1.0),
    ("learn_unknown", "false", "learn_unknown", False),
])
def test_the_policy_gets_what_the_lab_sets(tmp_path: Path, key: str, value: object, field: str, want: float) -> None:
    assert getattr(limits(_load(tmp_path, key, value)), field) == want


def test_an_environment_override_reaches_the_policy() -> None:
    got = limits(config.load(None, env={"HYBRIDCTL_CLOUD__BURST__LINDY": "3",
                                        "HYBRIDCTL_CLOUD__BURST__RECALL_MIN": "600"}))
    assert (got.lindy, got.recall_min_s) == (3.0, 600.0)


@pytest.mark.parametrize("key, value, shown, accepted", [
    ("lindy", -1, "-1", "a factor from 0 (off) to 100"),
    ("lindy", 101, "101", "a factor from 0 (off) to 100"),
    ("lindy", ".inf", "inf", "a factor from 0 (off) to 100"),
    ("lindy", ".nan", "nan", "a factor from 0 (off) to 100"),
    ("lindy", "twice", "'twice'", "a factor from 0 (off) to 100"),
    ("lindy", "true", "True", "a factor from 0 (off) to 100"),
    ("unknown_risk", -60, "-60", "seconds from 0 (off) to 31536000 (365 days)"),
    ("unknown_risk", "1d", "'1d'", "seconds from 0 (off) to 31536000 (365 days)"),
    ("recall_min", -1, "-1", "seconds from 0 to 2592000 (30 days)"),
    ("recall_min", 2592001, "2592001", "seconds from 0 to 2592000 (30 days)"),
    ("recall_min", "1h", "'1h'", "seconds from 0 to 2592000 (30 days)"),
    ("recall_max_loss", 1.5, "1.5", "a fraction from 0 to 1"),
    ("recall_max_loss", -0.1, "-0.1", "a fraction from 0 to 1"),
    ("recall_max_loss", "10%", "'10%'", "a fraction from 0 to 1"),
    ("recall_max_loss", "null", "None", "a fraction from 0 to 1"),
])
def test_a_bad_value_exits_2_naming_file_key_value_and_what_is_accepted(
        tmp_path: Path, key: str, value: object, shown: str, accepted: str) -> None:
    with pytest.raises(config.ConfigError) as e:
        _load(tmp_path, key, value)
    assert e.value.exit_code == 2
    msg = str(e.value)
    assert f"cloud.burst.{key}" in msg and shown in msg and accepted in msg and "c.yaml" in msg, msg
