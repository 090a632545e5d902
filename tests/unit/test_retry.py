"""The requeue rule as a table: stops the job did not cause are recoveries (never charged to
max_restarts, capped by recovery.max_recoveries); its own non-zero exits are restarts; a time limit
is final. Plus the cap's config key and `show`'s summary of it."""

from __future__ import annotations

import pytest

from hybridctl import config
from hybridctl.cli.output import recovery_text
from hybridctl.config import ConfigError
from hybridctl.core.retry import MAX_RECOVERIES_KEY, Cause, Charge, decide

P, L, E, T = Cause.PREEMPTION, Cause.NODE_LOSS, Cause.EXIT, Cause.TIMEOUT
R, V = Charge.RESTART, Charge.RECOVERY


@pytest.mark.parametrize(
    ("cause", "restarts", "max_restarts", "recoveries", "cap", "code", "codes", "requeue", "charge", "kind"),
    [
        # Preemption and node loss: recovered with the default spec (max_restarts 0), whatever is used.
        (P, 0, 0, 0, 100, None, (), True, V, "preemption"),
        (L, 0, 0, 0, 100, None, (), True, V, "node loss"),
        (P, 2, 2, 99, 100, None, (), True, V, "preemption"),  # restarts used up: irrelevant
        (L, 0, 5, 7, 100, None, (), True, V, "node loss"),   # restarts left: still not used
        # ...until the sanity cap.
        (P, 0, 3, 100, 100, None, (), False, None, "preemption"),
        (L, 0, 0, 2, 2, None, (), False, None, "node loss"),
        (P, 0, 0, 0, 0, None, (), False, None, "preemption"),  # cap 0: never recover
        # The job's own failures: charged to max_restarts.
        (E, 0, 0, 0, 100, 1, (), False, None, ""),
        (E, 0, 2, 0, 100, 1, (), True, R, ""),
        (E, 1, 2, 50, 100, 1, (), True, R, ""),
        (E, 2, 2, 0, 100, 1, (), False, None, ""),
        (E, 0, 2, 100, 100, 1, (), True, R, ""),  # recoveries at the cap do not stop a restart
        # ...except codes in recover_on_exit_codes: recoveries, capped the same way.
        (E, 2, 2, 0, 100, 75, (75,), True, V, "exit code 75"),
        (E, 0, 0, 3, 3, 75, (75, 143), False, None, "exit code 75"),
        (E, 0, 0, 0, 100, 76, (75,), False, None, ""),
        # A time limit is final (Slurm does not requeue TIMEOUT), restarts or not.
        (T, 0, 5, 0, 100, None, (), False, None, ""),
        (T, 0, 0, 0, 100, None, (75,), False, None, ""),
    ],
)
def test_decide(cause: Cause, restarts: int, max_restarts: int, recoveries: int, cap: int, code: int | None,
                codes: tuple[int, ...], requeue: bool, charge: Charge | None, kind: str) -> None:
    d = decide(cause, restarts_used=restarts, max_restarts=max_restarts, recoveries_used=recoveries,
               max_recoveries=cap, exit_code=code, recover_codes=codes)
    assert (d.requeue, d.charge, d.kind) == (requeue, charge, kind)


@pytest.mark.parametrize(
    ("cause", "restarts", "max_restarts", "recoveries", "cap", "code", "codes", "note"),
    [
        (P, 0, 0, 1, 100, None, (), "requeued (recovery 2 of at most 100; preemption does not use max_restarts)"),
        (L, 0, 0, 4, 4, None, (),
         "not requeued: already recovered 4 times, the most recovery.max_recoveries (4) allows"),
        (E, 0, 2, 0, 100, 3, (), "requeued (restart 1 of 2)"),
        (E, 2, 2, 0, 100, 3, (), "no restarts left (max_restarts 2)"),
        (E, 0, 0, 0, 100, 3, (), ""),  # no restarts asked for: the exit says it all
        (E, 0, 0, 0, 100, 75, (75,), "exit code 75 is in recover_on_exit_codes: requeued (recovery 1 of at most 100)"),
        (T, 0, 1, 0, 100, None, (), ""),
    ],
)
def test_the_note_says_which_counter_and_names_the_cap(cause: Cause, restarts: int, max_restarts: int,
                                                      recoveries: int, cap: int, code: int | None,
                                                      codes: tuple[int, ...], note: str) -> None:
    d = decide(cause, restarts_used=restarts, max_restarts=max_restarts, recoveries_used=recoveries,
               max_recoveries=cap, exit_code=code, recover_codes=codes)
    assert d.note == note
    if not d.requeue and d.kind:
        assert MAX_RECOVERIES_KEY in d.note


@pytest.mark.parametrize(
    ("task", "max_restarts", "text"),
    [
        ({"recoveries": 2, "recovery_causes": {"preemption": 2}, "restarts": 0}, 2,
         "recovered 2 times (preemption), restarts 0/2"),
        ({"recoveries": 3, "recovery_causes": {"node loss": 1, "preemption": 2}, "restarts": 1}, 1,
         "recovered 3 times (2 preemption, 1 node loss), restarts 1/1"),
        ({"recoveries": 1, "recovery_causes": {"exit code 75": 1}, "restarts": 0}, 0,
         "recovered 1 time (exit code 75), restarts 0/0"),
        ({"recoveries": 0, "recovery_causes": {}, "restarts": 0}, 0, "not recovered, restarts 0/0"),
        ({}, 3, "not recovered, restarts 0/3"),  # an older controller's answer
    ],
)
def test_show_summarises_recoveries_apart_from_restarts(task: dict, max_restarts: int, text: str) -> None:
    assert recovery_text(task, max_restarts) == text


@pytest.mark.parametrize("value", ["-1", "2.5", "100001", "true", "many", ".inf"])
def test_the_cap_is_range_checked_naming_its_key(value: str) -> None:
    with pytest.raises(ConfigError, match="recovery.max_recoveries"):
        config.load(None, env={"HYBRIDCTL_RECOVERY__MAX_RECOVERIES": value})


@pytest.mark.parametrize(("value", "cap"), [(None, 100), ("0", 0), ("7", 7), ("100000", 100000)])
def test_the_cap_defaults_to_100(value: str | None, cap: int) -> None:
    env = {} if value is None else {"HYBRIDCTL_RECOVERY__MAX_RECOVERIES": value}
    assert config.load(None, env=env).recovery.max_recoveries == cap
