"""The job state machine: every edge of DESIGN.md is legal, everything else raises."""

from __future__ import annotations

import itertools

import pytest

from hybridctl.core.errors import IllegalTransition
from hybridctl.core.model import TRANSITIONS, JobStatus, check_transition

S = JobStatus
LEGAL = {
    (S.PENDING, S.STARTING), (S.PENDING, S.CANCELLED), (S.PENDING, S.FAILED),
    (S.STARTING, S.RUNNING), (S.STARTING, S.FAILED), (S.STARTING, S.CANCELLED), (S.STARTING, S.SUCCEEDED),
    (S.STARTING, S.PREEMPTED), (S.STARTING, S.NODE_LOST), (S.STARTING, S.PENDING),
    (S.RUNNING, S.SUCCEEDED), (S.RUNNING, S.FAILED), (S.RUNNING, S.CANCELLED), (S.RUNNING, S.TIMEOUT),
    (S.RUNNING, S.PREEMPTED), (S.RUNNING, S.NODE_LOST), (S.RUNNING, S.PENDING),
    (S.PREEMPTED, S.PENDING), (S.PREEMPTED, S.FAILED), (S.PREEMPTED, S.CANCELLED),
    (S.NODE_LOST, S.PENDING), (S.NODE_LOST, S.FAILED), (S.NODE_LOST, S.CANCELLED),
}


@pytest.mark.parametrize("old, new", list(itertools.product(S, S)))
def test_transition_table(old: JobStatus, new: JobStatus) -> None:
    if (old, new) in LEGAL:
        check_transition("1", old, new)
    else:
        with pytest.raises(IllegalTransition, match=f"from {old.value} to {new.value}"):
            check_transition("1", old, new)


def test_terminal_states_have_no_way_out() -> None:
    for s in S:
        assert s.is_terminal() == (not TRANSITIONS[s]), s
