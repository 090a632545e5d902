"""Output copies expire (`cloud.output_keep_days`): the controller's copies of cloud jobs'
$HYBRIDCTL_OUTPUT_DIR are swept through directory fds, never following a link. A copy whose job is
gone, or that is older than the job now holding its id (a database reset hands ids out again),
goes at once: else the new job's owner would read someone else's files. A real store and home."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from hybridctl.config import ConfigError, Settings, load
from hybridctl.control import outputs
from hybridctl.control.service import Controller
from hybridctl.store.sqlite import Store
from tests.unit.controller_kit import ALICE, BOB, submit

DAY = 86400.0


def copy_of(home: Path, key: str, text: str = "alice's results") -> Path:
    """A rank's output copy, as the autoscaler's download leaves it."""
    d = home / outputs.OUTPUTS / key
    d.mkdir(parents=True)
    (d / "result.txt").write_text(text)
    return d


def test_after_a_database_reset_a_new_job_does_not_get_the_old_jobs_outputs(tmp_path: Path) -> None:
    settings = Settings(home=str(tmp_path))
    store = Store(settings.db_path)
    ctl = Controller(store, settings, clock=time.time)
    assert submit(ctl, ALICE) == 1
    copy_of(tmp_path, "1.a0.r0")
    store.close()
    settings.db_path.unlink()  # the admin starts over with an empty database

    store = Store(settings.db_path)
    try:
        ctl = Controller(store, settings, clock=time.time)
        assert submit(ctl, BOB) == 1  # the same id, another owner
        removed = outputs.sweep(settings, store, time.time())
        assert removed == ["1.a0.r0"]
        assert not outputs.has_copy(tmp_path, "1.a0.r0")
    finally:
        store.close()


def test_an_orphan_goes_at_once_an_old_copy_after_keep_days_and_a_fresh_one_stays(tmp_path: Path) -> None:
    settings = Settings(home=str(tmp_path))
    store = Store(settings.db_path)
    try:
        ctl = Controller(store, settings, clock=lambda: time.time() - 60)  # submitted before it ran
        job = submit(ctl, ALICE)
        copy_of(tmp_path, f"{job}.a0.r0")
        copy_of(tmp_path, f"{job}_3.a1.r0")
        copy_of(tmp_path, "77.a0.r0")  # no job 77: an orphan
        (tmp_path / outputs.OUTPUTS / "not-a-key").mkdir()  # not a name hybridctl makes: left alone
        now = time.time()
        assert outputs.sweep(settings, store, now) == ["77.a0.r0"]
        keep = settings.cloud.output_keep_days * DAY
        assert outputs.sweep(settings, store, now + keep - 60) == []
        assert sorted(outputs.sweep(settings, store, now + keep + 60)) == [f"{job}.a0.r0", f"{job}_3.a1.r0"]
        assert sorted(os.listdir(tmp_path / outputs.OUTPUTS)) == ["not-a-key"]
    finally:
        store.close()


def test_the_sweep_never_follows_a_link(tmp_path: Path) -> None:
    settings = Settings(home=str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "keep.txt").write_text("not the controller's")
    store = Store(settings.db_path)
    try:
        inner = copy_of(settings.home_path, "5.a0.r0")
        (inner / "sub").mkdir()
        (inner / "sub" / "escape").symlink_to(precious)  # a link inside a copy
        (settings.home_path / outputs.OUTPUTS / "6.a0.r0").symlink_to(precious)  # a copy that is a link
        assert sorted(outputs.sweep(settings, store, time.time())) == ["5.a0.r0", "6.a0.r0"]  # orphans
        assert (precious / "keep.txt").read_text() == "not the controller's"
        assert os.listdir(settings.home_path / outputs.OUTPUTS) == []
    finally:
        store.close()


def test_no_outputs_directory_is_nothing_to_sweep(tmp_path: Path) -> None:
    settings = Settings(home=str(tmp_path))
    store = Store(settings.db_path)
    try:
        assert outputs.sweep(settings, store, time.time()) == []
    finally:
        store.close()


@pytest.mark.parametrize("value", ["0", "-1", ".nan", ".inf", "lots", "100000"])
def test_output_keep_days_is_checked(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError, match="cloud.output_keep_days"):
        load(None, {"HYBRIDCTL_CLOUD__OUTPUT_KEEP_DAYS": value})


def test_output_keep_days_defaults_to_14_and_takes_a_fraction() -> None:
    assert Settings().cloud.output_keep_days == 14
    assert load(None, {"HYBRIDCTL_CLOUD__OUTPUT_KEEP_DAYS": "0.5"}).cloud.output_keep_days == 0.5
