"""file_mounts through a real agent: s3:// objects and prefixes from a moto server on 127.0.0.1,
files the controller staged into the node's cache, shared paths used in place; one cached copy
per content, verified, resumed, evicted least recently used."""

from __future__ import annotations

import hashlib
import json
import os
import pwd
from pathlib import Path
from typing import Any, Callable, Dict, Iterator

import pytest

from hybridctl_agent.cache import CacheError, ContentCache
from hybridctl_agent.client import AgentCallError
from tests.agent.agent_harness import AgentProc
from tests.agent.world_kit import launch, log, no_orphan_preparations  # noqa: F401 - autouse

CREDS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
         "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-east-2"}


@pytest.fixture
def s3(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    boto3 = pytest.importorskip("boto3")
    for k, v in CREDS.items():
        monkeypatch.setenv(k, v)
    client = boto3.client("s3", endpoint_url=moto_server)
    client.create_bucket(Bucket="lab", CreateBucketConfiguration={"LocationConstraint": "us-east-2"})
    yield client
    for obj in client.list_objects_v2(Bucket="lab").get("Contents", []):
        client.delete_object(Bucket="lab", Key=obj["Key"])
    client.delete_bucket(Bucket="lab")


@pytest.fixture
def shared(tmp_path: Path) -> Path:
    d = tmp_path / "shared"
    d.mkdir()
    return d


@pytest.fixture
def mount_agent(make_agent: Callable[..., AgentProc], moto_server: str, shared: Path,
                tmp_path: Path) -> AgentProc:
    cfg = tmp_path / "agent.json"
    cfg.write_text(json.dumps({"s3_endpoint_url": moto_server, "shared_paths": [str(shared)],
                               "cache_max_gb": 0.0}))
    agent = make_agent("--simulate-gpus", "1:A100", "--config", str(cfg), env=CREDS)
    os.chmod(agent.base, 0o711)
    return agent


def test_s3_objects_and_prefixes_land_once_and_two_jobs_share_the_copy(
        mount_agent: AgentProc, s3: Any) -> None:
    blob = os.urandom(300_000)
    s3.put_object(Bucket="lab", Key="one.bin", Body=blob)
    for name in ("a.txt", "sub/b.txt"):
        s3.put_object(Bucket="lab", Key=f"ds/{name}", Body=name.encode())
    s3.put_object(Bucket="lab", Key="copy/x.bin", Body=blob)  # same bytes, another name
    mounts = [{"dst": "data/one.bin", "s3": "s3://lab/one.bin"},
              {"dst": "data/ds", "s3": "s3://lab/ds/"},
              {"dst": "data/copy", "s3": "s3://lab/copy"}]
    run = "sha256sum < data/one.bin; cat data/ds/a.txt data/ds/sub/b.txt; echo; cmp data/one.bin data/copy/x.bin && echo same"
    for key in ("90.1", "91.1"):
        launch(mount_agent, key, run, file_mounts=mounts)
        done = mount_agent.wait_exited(key)
        assert done["exit_code"] == 0, (done, log(mount_agent, key, "stderr"))
        out = log(mount_agent, key).split()
        assert out[0] == hashlib.sha256(blob).hexdigest() and out[2:] == ["a.txtsub/b.txt", "same"]
    first, second = log(mount_agent, "90.1", "stderr"), log(mount_agent, "91.1", "stderr")
    assert "mount s3://lab/one.bin: 1 object(s), 300000 bytes fetched, 0 bytes cached" in first
    assert "mount s3://lab/copy: 1 object(s), 0 bytes fetched, 300000 bytes cached" in first
    assert "mount s3://lab/one.bin: 1 object(s), 0 bytes fetched, 300000 bytes cached" in second
    listed = mount_agent.call("cache_list")["objects"]
    assert sorted(o["size"] for o in listed) == sorted([300_000, 5, 9])  # one copy per content
    target = Path(os.readlink(mount_agent.job_dir("91.1") / "work" / "data" / "one.bin"))
    assert target.stat().st_uid == 0 and (target.stat().st_mode & 0o777) == 0o444


def test_an_interrupted_fetch_resumes_and_is_verified(mount_agent: AgentProc, s3: Any) -> None:
    blob = os.urandom(200_000)
    etag = s3.put_object(Bucket="lab", Key="big.bin", Body=blob)["ETag"].strip('"')
    source = f"s3://lab/big.bin@{etag}:{len(blob)}"
    part = Path(mount_agent.state_dir) / "cache" / "tmp" / (hashlib.sha256(source.encode()).hexdigest() + ".part")
    part.write_bytes(blob[:120_000])  # what a fetch cut off by an agent restart left
    launch(mount_agent, "92.1", "sha256sum < big", file_mounts=[{"dst": "big", "s3": "s3://lab/big.bin"}])
    assert mount_agent.wait_exited("92.1")["exit_code"] == 0
    assert log(mount_agent, "92.1").split()[0] == hashlib.sha256(blob).hexdigest()
    assert "80000 bytes fetched" in log(mount_agent, "92.1", "stderr")
    # a corrupt partial download is caught by the ETag's MD5, never cached
    blob2 = os.urandom(200_000)
    etag2 = s3.put_object(Bucket="lab", Key="big2.bin", Body=blob2)["ETag"].strip('"')
    part2 = part.with_name(hashlib.sha256(f"s3://lab/big2.bin@{etag2}:{len(blob2)}".encode()).hexdigest() + ".part")
    part2.write_bytes(b"x" * 1000)
    launch(mount_agent, "93.1", "true", file_mounts=[{"dst": "big", "s3": "s3://lab/big2.bin"}])
    done = mount_agent.wait_exited("93.1")
    assert done["reason"].startswith("file_mounts_failed: step 'fetch file_mounts'") and "ETag" in done["reason"]


def test_a_missing_s3_object_fails_the_job_naming_it(mount_agent: AgentProc, s3: Any) -> None:
    launch(mount_agent, "94.1", "echo never", file_mounts=[{"dst": "x", "s3": "s3://lab/nope"}])
    done = mount_agent.wait_exited("94.1")
    assert done["reason"] == ("file_mounts_failed: step 'fetch file_mounts' failed: "
                              "s3://lab/nope: no such object or prefix")
    assert log(mount_agent, "94.1") == ""


def test_staged_files_enter_the_cache_verified_and_mount_from_it(mount_agent: AgentProc) -> None:
    data = b"weights " * 1000
    sha = hashlib.sha256(data).hexdigest()
    opened = mount_agent.call("stage_open")
    Path(opened["path"], "f1").write_bytes(data)
    with pytest.raises(AgentCallError) as err:
        mount_agent.call("cache_add", token=opened["token"], files={"f1": ["0" * 64, len(data)]})
    assert err.value.code == "refused" and "do not match" in str(err.value)
    opened = mount_agent.call("stage_open")
    Path(opened["path"], "f1").write_bytes(data)
    added = mount_agent.call("cache_add", token=opened["token"], files={"f1": [sha, len(data)]})
    assert (added["added"], added["present"]) == (1, 0)
    opened = mount_agent.call("stage_open")  # the same content again: nothing to move
    added = mount_agent.call("cache_add", token=opened["token"], files={"f1": [sha, len(data)]})
    assert (added["added"], added["present"]) == (0, 1)
    objects = {"": [sha, len(data)]}
    launch(mount_agent, "95.1", "sha256sum < w/m.bin; cat t/a/b",
           file_mounts=[{"dst": "w/m.bin", "objects": objects},
                        {"dst": "t", "objects": {"a/b": [sha, len(data)]}}])
    assert mount_agent.wait_exited("95.1")["exit_code"] == 0, log(mount_agent, "95.1", "stderr")
    assert log(mount_agent, "95.1").startswith(sha)
    launch(mount_agent, "96.1", "true", file_mounts=[{"dst": "w", "objects": {"": ["1" * 64, 5]}}])
    assert "not in this node's cache" in mount_agent.wait_exited("96.1")["reason"]


def test_a_shared_path_is_used_in_place_and_others_are_refused(
        mount_agent: AgentProc, shared: Path) -> None:
    (shared / "d").mkdir()
    (shared / "d" / "f").write_text("on the shared fs")
    launch(mount_agent, "97.1", "cat in/f", file_mounts=[{"dst": "in", "path": str(shared / "d")}])
    assert mount_agent.wait_exited("97.1")["exit_code"] == 0
    assert log(mount_agent, "97.1") == "on the shared fs"
    with pytest.raises(AgentCallError) as err:
        launch(mount_agent, "98.1", "true", file_mounts=[{"dst": "in", "path": "/etc"}])
    assert err.value.code == "bad_request" and "not under this node's shared_paths" in str(err.value)
    for bad in ([{"dst": "x"}], [{"dst": "x", "s3": "http://a"}], [{"dst": "x", "objects": {"../a": ["0" * 64, 1]}}],
                "x"):
        with pytest.raises(AgentCallError) as err:
            launch(mount_agent, "98.1", "true", file_mounts=bad)
        assert err.value.code == "bad_request" and "job.file_mounts" in str(err.value)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a job as nobody")
def test_mounts_are_placed_with_the_jobs_rights(mount_agent: AgentProc, s3: Any, tmp_path: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    s3.put_object(Bucket="lab", Key="n.txt", Body=b"for nobody")
    job = {"uid": nobody.pw_uid, "gid": nobody.pw_gid, "user": "nobody"}
    launch(mount_agent, "99.1", "cat n", file_mounts=[{"dst": "n", "s3": "s3://lab/n.txt"}], **job)
    done = mount_agent.wait_exited("99.1")
    assert done["exit_code"] == 0 and log(mount_agent, "99.1") == "for nobody", log(mount_agent, "99.1", "stderr")
    assert (mount_agent.job_dir("99.1") / "work" / "n").lstat().st_uid == nobody.pw_uid
    root_only = tmp_path / "root-only"
    root_only.mkdir(mode=0o700)  # nobody may not write here: neither may its mount
    launch(mount_agent, "99.2", "true", file_mounts=[{"dst": str(root_only / "n"), "s3": "s3://lab/n.txt"}], **job)
    done = mount_agent.wait_exited("99.2")
    assert done["reason"].startswith("file_mounts_failed: step 'place file_mounts as the job's user'")
    assert not (root_only / "n").exists()


def test_eviction_drops_least_recently_used_unpinned_objects(tmp_path: Path) -> None:
    cache = ContentCache(str(tmp_path), max_bytes=250)
    cache.prepare()
    shas = []
    for i, mtime in enumerate((100, 300, 200)):
        data = bytes([i]) * 100
        sha = hashlib.sha256(data).hexdigest()
        (cache.tmp / "t").write_bytes(data)
        cache.add(str(cache.tmp / "t"), sha, 100)
        os.utime(cache.path(sha), (mtime, mtime))
        shas.append(sha)
    assert cache.evict(pinned={shas[0]}) == [shas[2]]  # the oldest is pinned: the next one goes
    assert cache.evict(pinned=set(), room=100) == [shas[0]]
    assert [o["sha256"] for o in cache.listing()] == [shas[1]]
    (cache.tmp / "t").write_bytes(b"tampered")
    with pytest.raises(CacheError, match="do not match"):
        cache.add(str(cache.tmp / "t"), shas[0], 8)
    assert not (cache.tmp / "t").exists()
