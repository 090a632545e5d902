"""A cache id is no capability: a node's file_mount objects are shared (one copy per content),
yet a user who learns another user's object id (its full SHA-256) cannot open it. Objects sit
in `cache/objects/` (0700, the agent's); a job reaches them through hard links the agent made in
`cache/users/<uid>/` (the agent's, searchable by that uid alone)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pwd
from pathlib import Path
from typing import Callable, List

import pytest

from hybridctl_agent.binds import BindRefused, cache_links
from hybridctl_agent.cache import CacheError, ContentCache
from tests.agent.agent_harness import AgentProc
from tests.agent.uid_kit import as_uid, open_as, open_tmp, private_account  # noqa: F401 - fixture
from tests.agent.world_kit import launch, log, no_orphan_preparations  # noqa: F401 - autouse

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run jobs and opens as nobody")


def stage(agent: AgentProc, data: bytes) -> str:
    sha = hashlib.sha256(data).hexdigest()
    opened = agent.call("stage_open")
    Path(opened["path"], "f").write_bytes(data)
    agent.call("cache_add", token=opened["token"], files={"f": [sha, len(data)]})
    return sha


@pytest.fixture
def agent(make_agent: Callable[..., AgentProc]) -> AgentProc:
    agent = make_agent("--simulate-gpus", "1:A100")
    os.chmod(agent.base, 0o711)  # nobody's job must reach its own job directory
    return agent


def test_nobody_cannot_open_roots_object_by_its_full_id_yet_shares_it(agent: AgentProc, tmp_path: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    secret_file = tmp_path / "secret"
    secret_file.write_bytes(b"root's secret " + os.urandom(16).hex().encode())
    secret_file.chmod(0o600)
    secret = secret_file.read_bytes()
    sha = stage(agent, secret)  # what the controller does with a local file_mount
    launch(agent, "50.1", "sha256sum < s", file_mounts=[{"dst": "s", "objects": {"": [sha, len(secret)]}}])
    done = agent.wait_exited("50.1")
    assert done["exit_code"] == 0 and log(agent, "50.1").split()[0] == sha, log(agent, "50.1", "stderr")
    cache = Path(agent.state_dir) / "cache"
    attack = [str(cache / "objects" / sha), str(cache / "users" / "0" / sha)]
    assert open_as(nobody.pw_uid, nobody.pw_gid, attack) == [errno.EACCES, errno.EACCES]
    # nobody's own job mounting the same bytes works, through the one shared copy
    launch(agent, "51.1", "sha256sum < s", uid=nobody.pw_uid, gid=nobody.pw_gid, user="nobody",
           file_mounts=[{"dst": "s", "objects": {"": [sha, len(secret)]}}])
    done = agent.wait_exited("51.1")
    assert done["exit_code"] == 0 and log(agent, "51.1").split()[0] == sha, log(agent, "51.1", "stderr")
    mine = Path(os.readlink(agent.job_dir("51.1") / "work" / "s"))
    assert mine == cache / "users" / str(nobody.pw_uid) / sha
    roots = Path(os.readlink(agent.job_dir("50.1") / "work" / "s"))
    inodes = {os.stat(p).st_ino for p in (mine, roots, cache / "objects" / sha)}
    assert len(inodes) == 1 and os.stat(mine).st_nlink == 3
    assert open_as(nobody.pw_uid, nobody.pw_gid, [str(mine)]) == [0]
    # the ACL lets nobody alone in: another uid, with its own group or the directory's (root's), not
    udir = cache / "users" / str(nobody.pw_uid)
    for gid in (4242, 0):
        assert open_as(4242, gid, [str(mine), str(udir)]) == [errno.EACCES, errno.EACCES], gid
    # the user can neither list nor write its own link directory (no planted name where root works)
    assert open_as(nobody.pw_uid, nobody.pw_gid, [str(udir), str(mine)]) == [errno.EACCES, 0]
    assert udir.stat().st_uid == 0 and udir.stat().st_mode & 0o002 == 0
    assert agent.call("cache_list")["objects"] == [
        {"sha256": sha, "size": len(secret), "last_used": os.stat(mine).st_mtime}]


def test_eviction_unlinks_every_users_link_before_the_space_comes_back(tmp_path: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    cache = ContentCache(str(tmp_path), max_bytes=150)
    cache.prepare()
    shas = []
    for i, mtime in enumerate((100, 200)):
        data = bytes([i]) * 100
        sha = hashlib.sha256(data).hexdigest()
        (cache.tmp / "t").write_bytes(data)
        cache.add(str(cache.tmp / "t"), sha, 100)
        os.utime(cache.path(sha), (mtime, mtime))
        shas.append(sha)
    for uid, gid in ((0, 0), (nobody.pw_uid, nobody.pw_gid)):
        assert cache.grant(uid, gid, shas) == cache.users / str(uid)
    assert os.stat(cache.path(shas[0])).st_nlink == 3
    assert cache.used_bytes() == 200  # each object once, however many users link it
    assert cache.evict(pinned=set()) == [shas[0]]
    for uid in (0, nobody.pw_uid):
        assert not os.path.lexists(cache.users / str(uid) / shas[0])
        assert os.path.exists(cache.users / str(uid) / shas[1])
    assert [o["sha256"] for o in cache.listing()] == [shas[1]]


def one_object(cache: ContentCache, data: bytes) -> str:
    sha = hashlib.sha256(data).hexdigest()
    (cache.tmp / "t").write_bytes(data)
    cache.add(str(cache.tmp / "t"), sha, len(data))
    return sha


def test_without_posix_acls_only_a_private_group_lets_the_user_in(open_tmp: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    nobody, mine = pwd.getpwnam("nobody"), private_account()
    cache = ContentCache(str(open_tmp), max_bytes=0)
    cache.prepare()
    sha = one_object(cache, b"data")

    def no_acls(*_a: object, **_k: object) -> None:  # a fake filesystem without POSIX ACLs, on purpose
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(os, "setxattr", no_acls)
    for uid, gid in ((nobody.pw_uid, nobody.pw_gid), (nobody.pw_uid, 0)):  # nogroup, root's: shared
        with pytest.raises(CacheError, match=f"gid {gid} is shared"):
            cache.grant(uid, gid, [sha])
    udir = cache.grant(mine.pw_uid, mine.pw_gid, [sha])
    st = udir.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (0, mine.pw_gid, 0o710)
    assert open_as(mine.pw_uid, mine.pw_gid, [str(udir / sha), str(cache.path(sha))]) == [0, errno.EACCES]
    assert open_as(nobody.pw_uid, nobody.pw_gid, [str(udir / sha)]) == [errno.EACCES]


def test_an_agent_not_root_links_for_itself(open_tmp: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    state = open_tmp / "state"
    state.mkdir()
    os.chown(state, nobody.pw_uid, nobody.pw_gid)
    def agent() -> str:  # the agent, as nobody
        cache = ContentCache(str(state))
        cache.prepare()
        sha = one_object(cache, b"mine")
        udir = cache.grant(nobody.pw_uid, nobody.pw_gid, [sha])
        return repr(((udir / sha).read_bytes(), oct(udir.stat().st_mode & 0o777)))
    out = as_uid(nobody.pw_uid, nobody.pw_gid, agent)
    assert out == repr((b"mine", "0o700"))


def test_an_image_job_is_given_its_users_link_directory_never_objects(tmp_path: Path) -> None:
    cache = ContentCache(str(tmp_path), max_bytes=0)
    cache.prepare()
    assert cache_links(str(tmp_path), 4242) is None  # no file_mounts yet: nothing to bind
    cache.grant(4242, 4242, [one_object(cache, b"x")])
    path, fd = cache_links(str(tmp_path), 4242)
    try:
        assert path == str(cache.users / "4242") and os.path.samestat(os.fstat(fd), os.stat(path))
    finally:
        os.close(fd)
    os.rename(cache.users / "4242", cache.users / "elsewhere")
    os.symlink(cache.objects, cache.users / "4242")  # a link in its place is refused, not followed
    with pytest.raises(BindRefused, match="cannot open 4242"):
        cache_links(str(tmp_path), 4242)


def test_objects_stay_searchable_only_while_a_job_from_before_users_links_runs(tmp_path: Path) -> None:
    (tmp_path / "cache" / "objects").mkdir(parents=True, mode=0o711)  # an older agent's cache
    os.chmod(tmp_path / "cache" / "objects", 0o711)
    old = tmp_path / "jobs" / "7.0"
    old.mkdir(parents=True)
    (old / "mounts.json").write_text(json.dumps({"objects": ["0" * 64]}))  # its links go into objects/
    cache = ContentCache(str(tmp_path))
    cache.prepare()
    assert (cache.objects.stat().st_mode & 0o777) == 0o711 and not cache.seal(tmp_path / "jobs")
    (old / "exit.json").write_text("{}")  # it ended: nothing reads through objects/ any more
    assert cache.seal(tmp_path / "jobs") and (cache.objects.stat().st_mode & 0o777) == 0o700
    fresh = ContentCache(str(tmp_path / "new"))
    fresh.prepare()
    assert (fresh.objects.stat().st_mode & 0o777) == 0o700


def test_an_old_mounts_json_with_no_objects_does_not_keep_objects_searchable(tmp_path: Path) -> None:
    (tmp_path / "cache" / "objects").mkdir(parents=True)
    os.chmod(tmp_path / "cache" / "objects", 0o711)
    old = tmp_path / "jobs" / "8.0"
    old.mkdir(parents=True)
    (old / "mounts.json").write_text(json.dumps({"objects": []}))  # an older agent's, shared paths only
    cache = ContentCache(str(tmp_path))
    cache.prepare()
    assert (cache.objects.stat().st_mode & 0o777) == 0o700


def test_objects_are_sealed_when_the_last_old_layout_job_exits(agent: AgentProc) -> None:
    cache = ContentCache(agent.state_dir)
    launch(agent, "52.1", "while [ ! -e go ]; do sleep 0.05; done")  # the job waits for the test
    job = agent.job_dir("52.1")
    (job / "mounts.json").write_text(json.dumps({"objects": ["0" * 64]}))  # placed by an older agent
    os.chmod(cache.objects, 0o711)  # as an upgraded node keeps it while that job runs
    assert not cache.seal(Path(agent.state_dir) / "jobs")
    (job / "work" / "go").touch()
    assert agent.wait_exited("52.1")["exit_code"] == 0
    assert (cache.objects.stat().st_mode & 0o777) == 0o700  # at its exit, not at a next file_mounts launch


def two_caches(tmp_path: Path) -> ContentCache:
    """A prepared cache, no cap, in `tmp_path` (the name: one per test, never shared)."""
    cache = ContentCache(str(tmp_path), max_bytes=0)
    cache.prepare()
    return cache


def test_a_grant_racing_a_drop_leaves_no_link_the_cache_does_not_count(
        open_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nobody = pwd.getpwnam("nobody")
    cache = two_caches(open_tmp)
    sha = one_object(cache, b"raced")
    real_lstat, real_rename = os.lstat, os.rename
    granted: List[object] = []

    def then_grant() -> None:  # nobody's job placing its mounts at the worst moment, on purpose
        if not granted:
            try:
                granted.append(cache.grant(nobody.pw_uid, nobody.pw_gid, [sha]))
            except CacheError as exc:
                granted.append(exc)

    def lstat(path: object, *a: object, **k: object) -> os.stat_result:
        st = real_lstat(path, *a, **k)  # type: ignore[arg-type]
        if str(path) == str(cache.path(sha)):
            then_grant()
        return st

    def rename(src: object, dst: object, *a: object, **k: object) -> None:
        real_rename(src, dst, *a, **k)  # type: ignore[arg-type]
        if str(src) == str(cache.path(sha)):
            then_grant()

    monkeypatch.setattr(os, "lstat", lstat)
    monkeypatch.setattr(os, "rename", rename)
    cache.drop(sha)
    monkeypatch.undo()
    assert granted and isinstance(granted[0], CacheError) and sha[:12] in str(granted[0])
    assert not os.path.lexists(cache.users / str(nobody.pw_uid) / sha)  # no inode outside the count
    assert cache.listing() == [] and os.listdir(cache.tmp) == []


def test_a_drop_that_cannot_open_a_users_directory_raises_and_keeps_the_object(open_tmp: Path) -> None:
    cache = two_caches(open_tmp)
    sha = one_object(cache, b"kept")
    cache.grant(0, 0, [sha])
    (cache.users / "4243").write_bytes(b"")  # not a directory: its links (if any) cannot be seen
    with pytest.raises(NotADirectoryError):
        cache.drop(sha)
    assert [o["sha256"] for o in cache.listing()] == [sha] and os.listdir(cache.tmp) == []
    assert cache.evict(pinned=set(), room=1 << 30) == []  # still counted; evict skips it
    os.unlink(cache.users / "4243")
    cache.drop(sha)
    assert cache.listing() == [] and not os.path.lexists(cache.users / "0" / sha)


def test_a_copy_of_the_wrong_size_under_an_objects_name_is_replaced(open_tmp: Path) -> None:
    cache = two_caches(open_tmp)
    data = b"the right bytes"
    sha = hashlib.sha256(data).hexdigest()
    cache.path(sha).write_bytes(b"short")  # a torn copy from a crash, say
    assert not cache.has(sha, len(data))
    assert one_object(cache, data) == sha
    assert cache.has(sha, len(data)) and cache.path(sha).read_bytes() == data


def test_without_posix_acls_a_group_not_the_users_own_primary_is_refused(
        open_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import grp

    mine = private_account()
    used = {p.pw_gid for p in pwd.getpwall()}
    lone = next((g for g in grp.getgrall() if not g.gr_mem and g.gr_gid not in used), None)
    if lone is None:
        pytest.skip("no group without members that is nobody's primary group on this host")
    cache = two_caches(open_tmp)
    sha = one_object(cache, b"data")

    def no_acls(*_a: object, **_k: object) -> None:  # a fake filesystem without POSIX ACLs, on purpose
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(os, "setxattr", no_acls)
    # enumeration finds no other member, but a name service need not list them all (sssd, LDAP)
    with pytest.raises(CacheError, match=f"gid {lone.gr_gid} is shared"):
        cache.grant(mine.pw_uid, lone.gr_gid, [sha])


def test_a_state_directory_that_cannot_be_opened_refuses_the_bind(open_tmp: Path) -> None:
    (open_tmp / "state").write_bytes(b"")
    os.symlink(open_tmp, open_tmp / "linked")
    for bad in ("state", "linked", "missing"):
        with pytest.raises(BindRefused, match="cannot open the state directory"):
            cache_links(str(open_tmp / bad), 4242)


def test_a_failed_acl_write_names_the_error_not_none(open_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hybridctl_agent import mounts

    cache = two_caches(open_tmp)
    sha = one_object(cache, b"acl")
    job = open_tmp / "jobs" / "9.0"
    (job / "work").mkdir(parents=True)

    def broken(*_a: object, **_k: object) -> None:  # a filesystem that fails the xattr write, on purpose
        raise OSError(errno.EIO, "Input/output error")  # as from an fd: no filename

    monkeypatch.setattr(os, "setxattr", broken)
    answer = mounts.run({"state_dir": str(open_tmp), "max_bytes": 0, "log": str(job / "stderr"),
                         "as_root": False, "uid": 4242, "gid": 4242, "jobs_root": str(open_tmp / "jobs"),
                         "job_dir": str(job), "home": "/", "cwd": str(job / "work"),
                         "mounts": [{"dst": "s", "objects": {"": [sha, 3]}}]})
    assert answer["ok"] is False and answer["step"] == "link file_mounts for the job's user"
    assert answer["error"] == "[Errno 5] Input/output error", answer


def test_a_jobs_records_are_the_agents_alone(agent: AgentProc) -> None:
    """A job key is guessable and its directory searchable (0711): the records the agent keeps
    there (an exit reason may quote a failed build's log; mounts.json names the job's full object
    ids) open for no other user."""
    nobody = pwd.getpwnam("nobody")
    sha = stage(agent, b"data")
    launch(agent, "52.1", "cat s; exit 3", file_mounts=[{"dst": "s", "objects": {"": [sha, 4]}}])
    assert agent.wait_exited("52.1")["exit_code"] == 3
    d = agent.job_dir("52.1")
    agent.call("cancel", key="52.1", grace=1.0)  # after the exit: nothing to stop, no record written
    records = [d / n for n in ("spec.json", "started.json", "exit.json", "mounts.json") if (d / n).exists()]
    assert {p.name for p in records} == {"spec.json", "started.json", "exit.json", "mounts.json"}
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in records} == {p.name: "0o600" for p in records}
    assert open_as(nobody.pw_uid, nobody.pw_gid, [str(p) for p in records]) == [errno.EACCES] * len(records)
