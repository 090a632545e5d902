"""What walking hybridctl as `nobody` and as a newcomer found: node cache ids handed to every user
(they open the node's cache objects), job ids that crashed the controller or read '٣' as 3, flags
whose errors did not name them. A real store, an in-process controller, the CLI's own `main`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

import pytest

from hybridctl.cli.main import main
from hybridctl.config import NodeConfig, Settings
from hybridctl.control.nodes import config_record
from hybridctl.control.service import Controller
from hybridctl.core import fields
from hybridctl.core.errors import ExitCode, SpecError
from hybridctl.core.locality import NodeCache
from hybridctl.store.sqlite import Store
from tests.unit.controller_kit import ALICE, ROOT, Clock, submit

SHA = "ab" * 32
ENV = "cd" * 16


class OneCacheFleet:
    """The fleet as requests see it (control/ports.FleetView), with node n1 reporting one data
    object and one env in its cache."""

    def telemetry(self) -> dict[str, Any]:
        return {}

    def link_state(self, node: str) -> None:
        return None

    def caches(self) -> dict[str, Any]:
        return {"n1": NodeCache({SHA: 300}, {ENV: 100}, 0)}

    def kick(self, node: str) -> None:
        pass


@pytest.fixture
def ctl(tmp_path: Path) -> Iterator[Controller]:
    store = Store(tmp_path / "hybridctl.db")
    store.add_node(config_record(NodeConfig(name="n1", gpus="1xA100", cpus=8, memory="64G", simulated=True)), 0.0)
    try:
        yield Controller(store, Settings(home=str(tmp_path)), clock=Clock(), fleet=OneCacheFleet())  # type: ignore[arg-type]
    finally:
        store.close()


# ---- 1. cache ids are capabilities --------------------------------------------------------------


def test_a_user_sees_cache_ids_cut_to_16_hex_digits_and_an_admin_sees_them_whole(ctl: Controller) -> None:
    # Ids are cut for non-admins; on the node objects/ is 0700 and a full id opens nothing (agent cache.py).
    (mine,) = ctl.op_nodes(ALICE, cache=True)
    assert sorted(i["id"] for i in mine["cache_items"]) == sorted([SHA[:16], ENV[:16]])
    assert SHA not in repr(mine) and ENV not in repr(mine)
    (admins,) = ctl.op_nodes(ROOT, cache=True)
    assert sorted(i["id"] for i in admins["cache_items"]) == sorted([SHA, ENV])


# ---- 2. job ids ---------------------------------------------------------------------------------


@pytest.mark.parametrize("ref", ["1" * 23, str(2**63), "٣", "3_٣", "²", "3_" + "9" * 30, "-3", "3_-1", "", "0x3"])
def test_a_job_id_that_is_not_ascii_digits_below_2_63_is_refused_naming_it(ctl: Controller, ref: str) -> None:
    submit(ctl, ALICE)  # job 1 exists, so a ref read as 1 or 3 would not fail for want of a job
    with pytest.raises(SpecError) as err:
        ctl.op_show(ALICE, ref)
    assert err.value.exit_code == ExitCode.USAGE
    assert err.value.message.startswith("JOB: ") and "42_7" in err.value.message


@pytest.mark.parametrize("ref, parsed", [("42", (42, None)), ("42_7", (42, 7)), (" 9 ", (9, None)),
                                         (str(2**63 - 1), (2**63 - 1, None)), (7, (7, None))])
def test_a_job_id_in_ascii_digits_is_read(ref: object, parsed: tuple[int, int | None]) -> None:
    assert fields.parse_job_ref(ref) == parsed


def test_a_huge_job_id_on_the_command_line_exits_2_naming_it(capsys: pytest.CaptureFixture[str]) -> None:
    # Checked before the controller is asked: no controller runs here.
    assert main(["show", "1" * 23]) == ExitCode.USAGE
    err = capsys.readouterr().err
    assert "JOB: '11111111111111111111111' is not valid" in err and "Traceback" not in err
    assert main(["cancel", "5", "٣"]) == ExitCode.USAGE
    assert "JOB: '٣' is not valid" in capsys.readouterr().err


# ---- 3. flags name themselves -------------------------------------------------------------------


@pytest.mark.parametrize("argv, flag", [
    (["logs", "5", "--tail", "x"], "--tail: 'x' is not valid"),
    (["logs", "5", "--tail", "-3"], "--tail: '-3' is not valid"),
    (["logs", "5", "--rank", "one"], "--rank: 'one' is not valid"),
    (["logs", "5", "--rank", "-1"], "--rank: '-1' is not valid"),
    (["logs", "5", "--attempt", "1.5"], "--attempt: '1.5' is not valid"),
    (["outputs", "5", "--rank", "x"], "--rank: 'x' is not valid"),
    (["outputs", "5", "--attempt", "-2"], "--attempt: '-2' is not valid"),
    (["usage", "--since", "lots"], "--since: 'lots' is not valid"),
    (["usage", "--since", "0"], "--since: '0' is not valid"),
])
def test_a_bad_flag_value_exits_2_naming_the_flag(capsys: pytest.CaptureFixture[str], argv: list[str],
                                                  flag: str) -> None:
    assert main(argv) == ExitCode.USAGE
    err = capsys.readouterr().err
    assert err.startswith(f"hybridctl: {flag}; "), err


# ---- 4. a file_mount source that is a link says so ----------------------------------------------


def test_a_file_mount_source_that_is_a_symbolic_link_says_so(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from hybridctl.control.mounts import MountFailed, read_tree

    (tmp_path / "data.bin").write_bytes(b"x")
    (tmp_path / "link").symlink_to(tmp_path / "data.bin")
    (tmp_path / "out").mkdir()
    me = SimpleNamespace(uid=os.geteuid(), gid=os.getegid(), user="me", groups=lambda: [])
    with pytest.raises(MountFailed) as err:  # tar carries the link as a link: no bytes read through it
        read_tree(str(tmp_path / "link"), me, tmp_path / "out", 1 << 20)
    assert str(err.value) == f"file_mount {tmp_path / 'link'} is a symbolic link; name the file it points to"
    (tmp_path / "empty").mkdir()  # no link: the old words still fit
    with pytest.raises(MountFailed, match="holds no regular file"):
        read_tree(str(tmp_path / "empty"), me, tmp_path / "out", 1 << 20)


@pytest.mark.parametrize("parse, value", [
    (lambda v: fields.parse_depends_on(v), "٣"),
    (lambda v: fields.parse_dependency(v), "afterok:٣"),
    (lambda v: fields.parse_array(v), "١-٣"),
    (lambda v: fields.parse_array(v), "1-3%٢"),
    (lambda v: fields.parse_array(v), "1-3%" + "9" * 5000),  # int() itself refuses past 4300 digits
    (lambda v: fields.parse_depends_on(v), "9" * 5000),
])
def test_ids_in_a_job_spec_are_ascii_digits_too(parse: Any, value: str) -> None:
    with pytest.raises(SpecError):
        parse(value)


@pytest.mark.parametrize("field, args", [
    ("--rank", {"rank": "0/../../x"}), ("--rank", {"rank": -1}), ("--rank", {"rank": True}),
    ("--attempt", {"attempt": "x"}), ("--attempt", {"attempt": 1.5}),
    ("offset", {"offset": "x"}), ("offset", {"offset": 10**30}),
    ("max_bytes", {"max_bytes": 0}), ("max_bytes", {"max_bytes": "all"}),
])
async def test_a_logs_request_with_a_bad_number_is_refused_naming_it(ctl: Controller, field: str,
                                                                     args: dict[str, Any]) -> None:
    # Any local user sends these raw on the socket; they used to reach a path or a comparison
    # (a TypeError: a traceback in the controller's log).
    job = submit(ctl, ALICE)
    with pytest.raises(SpecError) as err:
        await ctl.op_logs(ALICE, str(job), **args)
    assert err.value.message.startswith(f"{field}: ")


@pytest.mark.parametrize("before_id", [[], {}, "x", -1, True])
def test_an_events_request_with_a_bad_before_id_is_refused_naming_it(ctl: Controller, before_id: Any) -> None:
    # Open to every user; a list used to reach SQLite (ProgrammingError: a traceback in the log).
    with pytest.raises(SpecError, match="^before_id: "):
        ctl.op_events(ALICE, before_id=before_id)
