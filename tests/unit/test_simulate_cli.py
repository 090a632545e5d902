"""`hybridctl simulate` against hostile input: every numeric flag, the fleet file and malformed
CSV / sacct rows end in exit 2 with a message naming the flag (or file, line and column), the
value and what is accepted; a replay too long to finish is refused before it starts; nothing is
half-written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hybridctl.cli.main import main

FLEET = "nodes:\n  - {name: a, count: 1, gpus: 8, model: NVIDIA A100-SXM4-80GB}\n"
CSV = "submit,user,gpus,gpu_type,nodes,duration\n0,a,1,A100,1,600\n60,b,8,A100,1,1200\n"


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    (tmp_path / "t.csv").write_text(CSV)
    (tmp_path / "fleet.yaml").write_text(FLEET)
    return tmp_path / "t.csv", tmp_path / "fleet.yaml"


def refused(capsys: pytest.CaptureFixture[str], argv: list[str], *names: str) -> str:
    """Run the CLI in-process; it must exit 2 and its message must name every one of `names`."""
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    for n in names:
        assert n in err, (n, err)
    return err


@pytest.mark.parametrize("flag,value", [
    ("--days", "inf"), ("--days", "nan"), ("--days", "-1"), ("--days", "0"), ("--days", "-inf"),
    ("--tick", "nan"), ("--tick", "inf"), ("--tick", "0"), ("--tick", "-60"),
])
def test_non_finite_or_non_positive_flags_name_themselves(capsys, flag, value) -> None:  # type: ignore[no-untyped-def]
    err = refused(capsys, ["simulate", "generate", f"{flag}={value}", "--strategy", "on-prem only"], flag, value)
    assert "accepted" in err


@pytest.mark.parametrize("argv,names", [
    (["--tick", "1e-9"], ["--tick", "1e-09", "passes"]),
    (["--tick", "0.5"], ["--tick", "0.5", "passes"]),
    (["--days", "1e9"], ["--days", "1e+09"]),
    (["--days", "400"], ["--days", "400"]),
])
def test_a_replay_too_long_to_finish_is_refused_before_it_starts(argv, names) -> None:  # type: ignore[no-untyped-def]
    # In a subprocess with a bound: before the fix these ran until killed.
    p = subprocess.run([sys.executable, "-m", "hybridctl.cli.main", "simulate", "generate", *argv,
                        "--strategy", "on-prem only"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2, p.stderr[-2000:]
    assert "Traceback" not in p.stderr
    for n in names:
        assert n in p.stderr, (n, p.stderr)


def test_a_long_trace_file_is_refused_at_a_fine_tick(capsys, files) -> None:  # type: ignore[no-untyped-def]
    t, fleet = files
    t.write_text("submit,gpus,duration\n0,1,60\n31536000,1,60\n")  # a year apart
    refused(capsys, ["simulate", str(t), "--fleet", str(fleet), "--tick", "10"], "--tick", "passes", "365")


@pytest.mark.parametrize("value", ["-1", "99999999999999999999999999"])
def test_seed_out_of_range(capsys, value) -> None:  # type: ignore[no-untyped-def]
    refused(capsys, ["simulate", "generate", f"--seed={value}", "--days", "1"], "--seed", value)


@pytest.mark.parametrize("group,named", [
    ("{name: a, count: 1, gpus: 8, model: X, cpus: .nan}", "cpus"),
    ("{name: a, count: 1, gpus: 8, model: X, memory_gb: .inf}", "memory_gb"),
    ("{name: a, count: 1000000000, gpus: 8, model: X}", "count"),
    ("{name: a, count: 1, gpus: 100000, model: X}", "gpus"),
    ("{name: a, count: 1, gpus: 8, model: X, cpus: -4}", "cpus"),
])
def test_fleet_values_are_bounded(capsys, files, group, named) -> None:  # type: ignore[no-untyped-def]
    t, fleet = files
    fleet.write_text(f"nodes:\n  - {group}\n")
    refused(capsys, ["simulate", str(t), "--fleet", str(fleet)], str(fleet), named)


@pytest.mark.parametrize("row,names", [
    ("nan,a,1,A100,1,600", ["t.csv:3", "submit", "'nan'"]),
    ("inf,a,1,A100,1,600", ["t.csv:3", "submit", "'inf'"]),
    ("1e300,a,1,A100,1,600", ["t.csv:3", "submit", "'1e300'"]),
    ("0,a,1,A100,1,nan", ["t.csv:3", "duration", "'nan'"]),
    ("0,a,1,A100,1,1e300", ["t.csv:3", "duration", "'1e300'"]),
    ("0,a,99999999999,A100,1,60", ["t.csv:3", "gpus", "'99999999999'"]),
    ("0,a,1,A100,100000,60", ["t.csv:3", "nodes", "'100000'"]),
    ("0,a,-1,A100,1,60", ["t.csv:3", "gpus", "'-1'"]),
])
def test_a_bad_csv_row_names_file_line_column_and_value(capsys, files, row, names) -> None:  # type: ignore[no-untyped-def]
    t, fleet = files
    t.write_text(CSV.splitlines()[0] + "\n0,a,1,A100,1,600\n" + row + "\n")
    out = t.parent / "out.csv"
    refused(capsys, ["simulate", str(t), "--fleet", str(fleet), "--write-trace", str(out)], *names)
    assert not out.exists()


SACCT_HEAD = "JobID|User|Submit|Elapsed|NNodes|AllocTRES|Timelimit|State\n"
SACCT_OK = "101|ann|2026-11-02T09:00:00|02:00:00|1|cpu=8,gres/gpu=1|1-00:00:00|COMPLETED\n"


@pytest.mark.parametrize("row,names", [
    ("102|bob|2026-11-02T10:00:00|00:10:00|1|cpu=4,gres/gpu=x|UNLIMITED|FAILED", ["AllocTRES", "'cpu=4,gres/gpu=x'"]),
    ("102|bob|2026-11-02T10:00:00|00:10:00|1|cpu=4,gres/gpu=inf|UNLIMITED|FAILED", ["AllocTRES"]),
    ("102|bob|2026-11-02T10:00:00|00:10:00|1|cpu=4,gres/gpu=1|1-xx:00:00|FAILED", ["Timelimit", "'1-xx:00:00'"]),
    ("102|bob|2026-11-02T10:00:00|nan|1|cpu=4,gres/gpu=1|UNLIMITED|FAILED", ["Elapsed", "'nan'"]),
    ("102|bob|2026-11-02T10:00:00|inf|1|cpu=4,gres/gpu=1|UNLIMITED|FAILED", ["Elapsed", "'inf'"]),
    ("102|bob|yesterday|00:10:00|1|cpu=4,gres/gpu=1|UNLIMITED|FAILED", ["Submit", "'yesterday'"]),
    ("102|bob|2026-11-02T10:00:00|00:10:00|1|cpu=4,gres/gpu=1|1-|FAILED", ["Timelimit", "'1-'"]),
    ("102|bob|2026-11-02T10:00:00|00:10:00|99999|cpu=4,gres/gpu=1|UNLIMITED|FAILED", ["NNodes", "'99999'"]),
])
def test_a_bad_sacct_row_names_file_line_column_and_value(capsys, files, row, names) -> None:  # type: ignore[no-untyped-def]
    t, fleet = files
    s = t.parent / "s.txt"
    s.write_text(SACCT_HEAD + SACCT_OK + row + "\n")
    refused(capsys, ["simulate", str(s), "--fleet", str(fleet)], "s.txt:3", *names)


def test_write_trace_into_a_missing_directory_is_exit_2_and_leaves_nothing(capsys, files) -> None:  # type: ignore[no-untyped-def]
    t, fleet = files
    target = t.parent / "no" / "such" / "dir" / "out.csv"
    refused(capsys, ["simulate", str(t), "--fleet", str(fleet), "--write-trace", str(target),
                     "--strategy", "on-prem only"], "--write-trace", str(target))
    assert not (t.parent / "no").exists()


def test_write_trace_is_whole_or_absent(capsys, files) -> None:  # type: ignore[no-untyped-def]
    t, fleet = files
    out = t.parent / "out.csv"
    assert main(["simulate", str(t), "--fleet", str(fleet), "--write-trace", str(out),
                 "--strategy", "on-prem only"]) == 0
    capsys.readouterr()
    assert out.read_text().count("\n") == 3 and not list(t.parent.glob(".out.csv*"))


def test_a_generated_trace_too_big_for_the_fleet_is_refused_before_it_is_made(capsys, files) -> None:  # type: ignore[no-untyped-def]
    _, fleet = files
    fleet.write_text("nodes:\n  - {name: a, count: 10000, gpus: 64, model: X}\n")
    refused(capsys, ["simulate", "generate", "--fleet", str(fleet), "--days", "2", "--tick", "600"],
            "--days 2", "640,000 GPUs", "accepted")


def test_days_with_a_trace_file_is_refused_not_ignored(capsys, files) -> None:  # type: ignore[no-untyped-def]
    t, fleet = files
    refused(capsys, ["simulate", str(t), "--fleet", str(fleet), "--days", "3"], "--days 3", "generate")


@pytest.mark.parametrize("trace", ["/dev/zero", "."])
def test_a_trace_that_is_not_a_regular_file_is_refused(capsys, files, trace) -> None:  # type: ignore[no-untyped-def]
    _, fleet = files
    err = refused(capsys, ["simulate", trace, "--fleet", str(fleet)], trace)
    assert "regular file" in err or "cannot read" in err


@pytest.mark.parametrize("flag", ["--fleet", "--config"])
def test_a_fleet_or_config_that_never_ends_is_refused(capsys, files, flag) -> None:  # type: ignore[no-untyped-def]
    t, _ = files
    refused(capsys, ["simulate", str(t), flag, "/dev/zero"], flag, "/dev/zero", "regular file")


def test_a_slurm_time_limit_of_forever_is_no_limit() -> None:
    import io

    from hybridctl.simulate import trace

    jobs, _ = trace.read_sacct(io.StringIO(SACCT_HEAD + SACCT_OK.replace("1-00:00:00", "9999-00:00:00")))
    assert [j.time_limit for j in jobs] == [None]


def test_a_replay_past_max_wall_stops_with_exit_2(capsys) -> None:  # type: ignore[no-untyped-def]
    import time

    t0 = time.monotonic()
    refused(capsys, ["simulate", "generate", "--days", "30", "--max-wall", "1"], "--max-wall 1")
    assert time.monotonic() - t0 < 30


@pytest.mark.parametrize("value", ["0", "nan", "inf", "1e9"])
def test_max_wall_out_of_range(capsys, value) -> None:  # type: ignore[no-untyped-def]
    refused(capsys, ["simulate", "generate", f"--max-wall={value}"], "--max-wall", "accepted")
