"""control/mounts.failed_onto: the one place that says why a launch step (file_mounts, environment
wheels) onto a node failed, and lets any other exception through as the bug it is."""

from __future__ import annotations

import asyncssh
import pytest

from hybridctl.control.mounts import MountFailed, failed_onto


def test_an_expected_error_says_its_message_and_the_step_and_node() -> None:
    assert failed_onto("file_mounts", "n1", MountFailed("/p/data: too big"), (MountFailed, OSError)) \
        == "file_mounts onto n1: /p/data: too big"
    assert failed_onto("environment wheels", "n2", FileNotFoundError(2, "gone"), (MountFailed, OSError)) \
        == "environment wheels onto n2: [Errno 2] gone"


def test_an_ssh_error_is_a_failure_and_anything_else_is_raised_again() -> None:
    lost = asyncssh.ConnectionLost("reset by peer")
    assert failed_onto("file_mounts", "n1", lost, (MountFailed,)) == "file_mounts onto n1: reset by peer"
    bug = KeyError("rank")
    with pytest.raises(KeyError) as raised:
        failed_onto("file_mounts", "n1", bug, (MountFailed, OSError))
    assert raised.value is bug
