"""Hostile values at the trust boundaries: job keys a node reports with another script's digits or a
trailing newline, task labels and spec values read with str.isdigit or a Unicode \\d ('٣' as 3, '²'
a ValueError), and request fields that are a list or a dict where a string was meant (they reached
SQLite: a traceback in the controller's log). A real store, an in-process controller; the daemon
turns the SpecError into its one-line exit-2 answer."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

from hybridctl.config import NodeConfig, Settings
from hybridctl.control.limits import BadRequest
from hybridctl.control.metrics import _task_ref
from hybridctl.control.nodes import config_record, parse_gpu_shape
from hybridctl.control.service import Controller
from hybridctl.core import fields, wire
from hybridctl.core.errors import ExitCode, SpecError
from hybridctl.core.reconcile import parse_key
from hybridctl.store.sqlite import Store
from tests.unit.controller_kit import ALICE, ROOT, Clock, submit

# ---- 1. job keys a node reports -----------------------------------------------------------------


@pytest.mark.parametrize("key", [
    "٣.a0.r0", "3_٣.a0.r0", "3.a٣.r0", "3.a0.r٣", "².a0.r0", "3.a0.r0²",  # \d took any script's digits
    "3.a0.r0\n", "3_1.a0.r0\n",  # '$' matched before a trailing newline
    "𝟑.a0.r0", "3.a0.r0\n\n", "\n3.a0.r0",
    f"{2**63}.a0.r0", "3.a0.r" + "9" * 30,  # past SQLite's INTEGER: an OverflowError in a lookup
])
def test_a_job_key_that_is_not_ascii_digits_or_ends_in_a_newline_is_not_ours(key: str) -> None:
    # A node is believed only about itself: '٣.a0.r0' read as job 3's key let it speak of job 3.
    assert parse_key(key) is None


@pytest.mark.parametrize("key, parsed", [("3.a0.r0", (3, 0, 0, 0)), ("12_7.a2.r1", (12, 7, 2, 1)),
                                         (f"{2**63 - 1}.a0.r0", (2**63 - 1, 0, 0, 0))])
def test_a_job_key_in_ascii_digits_is_read(key: str, parsed: tuple[int, int, int, int]) -> None:
    assert parse_key(key) == parsed


@pytest.mark.parametrize("check, value", [
    (wire.job_key, "3.a0.r0\n"), (wire.version, "v1\n"), (wire.job_key, "k\u0663"),
])
def test_the_wire_checks_refuse_a_trailing_newline_and_other_scripts(check: Any, value: str) -> None:
    # Held already (they end in \Z and spell [0-9]); kept here with the reconciler's key.
    assert check(value) is None


# ---- 2. task labels (control/metrics) -----------------------------------------------------------


@pytest.mark.parametrize("label", ["٣", "²", "3_٣", "3_²", "𝟑", "", "3_", "_3", "-3", "3\n"])
def test_a_task_label_that_is_not_ascii_digits_is_no_task(label: str) -> None:
    # str.isdigit is true for '٣' and '²' (int('²') even raises): the idle action would cancel job 3.
    assert _task_ref(label) is None


@pytest.mark.parametrize("label, ref", [("42", (42, 0)), ("42_7", (42, 7))])
def test_a_task_label_in_ascii_digits_is_read(label: str, ref: tuple[int, int]) -> None:
    assert _task_ref(label) == ref


# ---- 3. request fields of the wrong type --------------------------------------------------------


@pytest.fixture
def ctl(tmp_path: Path) -> Iterator[Controller]:
    store = Store(tmp_path / "hybridctl.db")
    store.add_node(config_record(NodeConfig(name="n1", gpus="1xA100", cpus=8, memory="64G", simulated=True)), 0.0)
    try:
        yield Controller(store, Settings(home=str(tmp_path)), clock=Clock())
    finally:
        store.close()


HOSTILE = [[], {}, ["n1"], {"n1": 1}, 3, None]


def refused(err: pytest.ExceptionInfo[SpecError], field: str, value: Any) -> None:
    """The error names the field, the value and what is accepted, and exits 2."""
    assert err.value.exit_code == ExitCode.USAGE
    assert err.value.field == field and err.value.value == value
    assert err.value.message.startswith(f"{field}: ") and err.value.accepted


@pytest.mark.parametrize("value", HOSTILE)
@pytest.mark.parametrize("op, field", [("drain", "node"), ("resume", "node"), ("node_remove", "name")])
def test_an_admin_node_request_with_a_name_that_is_not_a_string_is_refused_naming_it(
        ctl: Controller, op: str, field: str, value: Any) -> None:
    with pytest.raises(SpecError) as err:
        ctl.handle(ROOT, op, {field: value})
    refused(err, field, value)
    assert ctl.store.node("n1").name == "n1"  # nothing changed


@pytest.mark.parametrize("value", [[], {}, ["x"], {"x": 1}, 3])
def test_a_drain_reason_that_is_not_a_string_is_refused_naming_it(ctl: Controller, value: Any) -> None:
    with pytest.raises(SpecError) as err:
        ctl.op_drain(ROOT, "n1", reason=value)
    refused(err, "reason", value)
    assert not ctl.store.node("n1").drained


def test_a_drain_reason_is_kept_and_its_control_characters_are_not(ctl: Controller) -> None:
    ctl.op_drain(ROOT, "n1", reason="disk\x1b[2Jfull")
    assert ctl.store.node("n1").drain_reason == "disk\ufffd[2Jfull"
    assert ctl.op_resume(ROOT, "n1")["node"] == "n1"


@pytest.mark.parametrize("op, args, field", [
    ("queue", {"user": ["alice"]}, "--user"),
    ("queue", {"user": {"alice": 1}}, "--user"),
    ("queue", {"states": "RUNNING"}, "--state"),
    ("queue", {"states": None}, "--state"),
    ("usage", {"since": []}, "--since"),
    ("usage", {"since": "7d"}, "--since"),
    ("cancel", {"jobs": 3}, "JOB"),
    ("cancel", {"jobs": "1"}, "JOB"),
    ("cancel", {"jobs": ["1"], "reason": ["why"]}, "reason"),
    ("submit", {"spec": "run: true"}, "spec"),
    ("submit", {"spec": [["run", "true"]]}, "spec"),
    ("submit", {"yaml": ["run: true"]}, "yaml"),
    ("submit", {"yaml": "run: true", "source": ["job.yaml"]}, "source"),
    ("submit", {"spec": {"run": "true"}, "flags": [["run", "true"]]}, "flags"),
    ("submit", {"spec": {"run": "true"}, "flags": "run"}, "flags"),
    ("submit", {"spec": {"run": "true", "workdir": "w"}, "cwd": ["/tmp"]}, "cwd"),
    ("submit", {"yaml": "run: true\ncheckpoint_dir: c\n", "base_dir": {"/": 1}}, "base_dir"),
])
def test_a_request_field_of_the_wrong_type_is_refused_naming_it(ctl: Controller, op: str, args: dict[str, Any],
                                                                field: str) -> None:
    # Any local user sends these raw on the socket: a list reached SQLite or a path join, a string
    # was taken apart as a mapping (ValueError: a traceback in the controller's log).
    if op == "cancel":
        submit(ctl, ALICE)
    with pytest.raises(SpecError) as err:
        ctl.handle(ALICE, op, args)
    refused(err, field, list(args.values())[-1])  # the last one is the hostile one


@pytest.mark.parametrize("op, args, said", [
    ("cancel", {"job": "1"}, "request 'cancel': unknown argument 'job'; it takes: jobs, all_mine, reason"),
    ("ping", {"verbose": True}, "request 'ping': unknown argument 'verbose'; it takes: no arguments"),
    ("show", {}, "request 'show': argument 'job' is missing"),
    ("drain", {"reason": "disk"}, "request 'drain': argument 'node' is missing"),
])
def test_an_argument_a_request_does_not_take_or_lacks_is_refused_naming_it(
        ctl: Controller, op: str, args: dict[str, Any], said: str) -> None:
    # Python's TypeError named a method ("Controller.op_cancel() got an unexpected keyword argument").
    with pytest.raises(BadRequest) as err:
        ctl.handle(ROOT, op, args)
    assert err.value.message == said and err.value.exit_code == ExitCode.USAGE


def test_a_submit_flag_that_submit_does_not_take_is_refused_naming_it(ctl: Controller) -> None:
    # Spread into apply_flags(**flags): an unknown key was a TypeError deep in the handler.
    with pytest.raises(SpecError) as err:
        ctl.op_submit(ALICE, {"run": "true"}, flags={"gpus": "1", "bogus": 1})
    refused(err, "flags", "bogus")
    assert "time_limit" in err.value.accepted


def test_a_queue_state_that_is_not_a_string_is_refused_naming_it(ctl: Controller) -> None:
    with pytest.raises(SpecError) as err:
        ctl.op_queue(ALICE, states=["RUNNING", ["PENDING"]])  # .upper() of a list: AttributeError
    refused(err, "--state", ["PENDING"])


@pytest.mark.parametrize("args, field", [
    ({"name": ["n2"]}, "NAME"),
    ({"name": {"n2": 1}}, "NAME"),
    ({"port": ["22"]}, "--port"),
    ({"port": "\x00"}, "--port"),
    ({"port": "22"}, "--port"),
    ({"host": ["h"]}, "--host"),
    ({"user": {}}, "--user"),
    ({"identity": ["/k"]}, "--identity"),
    ({"agent_socket": ["/s"]}, "--agent-socket"),
    ({"accept_new": [1]}, "--accept-new"),
    ({"install": "yes"}, "--install"),
    ({"systemd": [0]}, "systemd"),
    ({"python": ["python3"]}, "--python"),
    ({"wheels": ["/w"]}, "--wheels"),
    ({"install_dir": {"/opt": 1}}, "--install-dir"),
])
async def test_a_node_add_field_of_the_wrong_type_is_refused_before_any_connection(
        ctl: Controller, args: dict[str, Any], field: str) -> None:
    request = {"name": "n2", "host": "local", **args}
    with pytest.raises(SpecError) as err:
        await ctl.handle(ROOT, "node_add", request)
    refused(err, field, list(args.values())[0])


# ---- 4. job-spec values with another script's digits (core/fields) ------------------------------


@pytest.mark.parametrize("parse, value", [
    (fields.parse_duration, "²"), (fields.parse_duration, "1:²"), (fields.parse_duration, "٣"),
    (fields.parse_duration, "٣h"), (fields.parse_duration, "1-٣"), (fields.parse_time_limit, "²"),
    (fields.parse_memory, "٣G"), (fields.parse_memory, "1\u212a"),  # KELVIN SIGN: 'K' under IGNORECASE
    (fields.parse_cpus, "٣"), (fields.parse_accelerators, "A100:٣"), (fields.parse_accelerators, "²"),
])
def test_a_spec_value_with_digits_that_are_not_ascii_is_refused_naming_it(parse: Any, value: str) -> None:
    # '٣' was read as 3; '²' (isdigit, but not int()) and 'K' (upper() is not 'K') raised ValueError or
    # KeyError: any user's `submit --time ²` put a traceback in the controller's log.
    with pytest.raises(SpecError) as err:
        parse(value, field="F")
    assert err.value.field == "F" and err.value.value == value


def test_a_submit_with_a_superscript_time_limit_is_refused_naming_it(ctl: Controller) -> None:
    with pytest.raises(SpecError, match="^time_limit: "):
        submit(ctl, ALICE, time_limit="²")


@pytest.mark.parametrize("shape", ["٣xA100", "²xA100", "A100:²", "A100:٣"])
def test_a_gpu_shape_with_digits_that_are_not_ascii_is_refused_naming_it(shape: str) -> None:
    # The config's `gpus:` (control/nodes): '٣xA100' was 3 GPUs, '²xA100' a ValueError at start-up.
    with pytest.raises(SpecError) as err:
        parse_gpu_shape(shape)
    assert err.value.field == "gpus" and err.value.value == shape


def test_a_gpu_shape_in_ascii_digits_is_read() -> None:
    assert [g["model"] for g in parse_gpu_shape("2xA100,A6000:1")] == ["A100", "A100", "A6000"]


@pytest.mark.parametrize("value", ["٣", "²", "1\n"])
def test_a_qos_priority_is_an_ascii_whole_number(value: str) -> None:
    from hybridctl.config import ConfigError, SlurmConfig

    with pytest.raises(ConfigError, match=r"slurm\.qos\.high: .* is not valid; a priority"):
        SlurmConfig(qos={"high": value})


@pytest.mark.parametrize("args, field", [({"ended": [1]}, "ended"), ({"ended": -1}, "ended"),
                                         ({"ended": 2.5}, "ended"), ({"ended": True}, "ended"),
                                         ({"all": "yes"}, "all"), ({"all": 1}, "all")])
def test_cloud_status_names_a_bad_field(ctl: Controller, args: dict[str, Any], field: str) -> None:
    # `ended=[1]` was a TypeError deep in the handler: "bad request", naming nothing.
    with pytest.raises(SpecError) as err:
        ctl.op_cloud_status(ALICE, **args)
    assert err.value.args[0].startswith(f"{field}: ")
