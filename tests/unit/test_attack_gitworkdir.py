"""Attacks on SkyPilot's git workdir (`workdir: {url, ref}`), which `hybridctl submit` clones as the
submitting user, often from a job file someone else wrote: options smuggled in the URL or the ref,
git's `ext::` transport (runs a command) and an ssh host that is an option."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from hybridctl.core.errors import SpecError
from hybridctl.gitworkdir import clone, workdir_of

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def test_options_in_the_url_or_ref_are_refused(tmp_path: Path) -> None:
    pwned = tmp_path / "pwned"
    for url in (f"--upload-pack=touch {pwned}", "-u touch"):
        with pytest.raises(SpecError, match="workdir.url"):
            workdir_of([{"workdir": {"url": url}}], "job.yaml")
    for ref in ("--output=/tmp/x", "-b", "main;touch x", "a b", "$(id)"):
        with pytest.raises(SpecError, match="workdir.ref"):
            workdir_of([{"workdir": {"url": "https://example.invalid/r.git", "ref": ref}}], "job.yaml")
    assert not pwned.exists()


def test_an_ssh_host_that_is_an_option_runs_nothing(tmp_path: Path) -> None:
    pwned = tmp_path / "pwned"
    with pytest.raises(SpecError, match="cannot be cloned"):
        clone(f"ssh://-oProxyCommand=touch%20{pwned}/x/repo", None, "job.yaml", cache=tmp_path / "cache")
    assert not pwned.exists()


def test_the_ext_transport_runs_nothing_even_where_the_users_git_allows_it(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A job file from someone else must not run a command through `ext::`, even for a user whose
    git config allows every protocol (`protocol.allow=always`, set for submodules)."""
    pwned = tmp_path / "pwned"
    config = tmp_path / "gitconfig"
    config.write_text("[protocol]\n\tallow = always\n")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(config))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(SpecError, match="cannot be cloned"):
        clone(f"ext::sh -c touch% {pwned}", None, "job.yaml", cache=tmp_path / "cache")
    assert not pwned.exists()


def test_a_local_repository_clones_at_its_commit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The hardening keeps the ordinary case working: a local repository (file transport)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    repo = tmp_path / "repo"
    env = {"GIT_AUTHOR_NAME": "a", "GIT_AUTHOR_EMAIL": "a@x", "GIT_COMMITTER_NAME": "a",
           "GIT_COMMITTER_EMAIL": "a@x", "HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    subprocess.run(["git", "init", "-q", str(repo)], check=True, env=env)
    (repo / "train.py").write_text("print(1)\n")
    subprocess.run(["git", "-C", str(repo), "add", "."], check=True, env=env)
    subprocess.run(["git", "-C", str(repo), "commit", "-qm", "x"], check=True, env=env)
    path = Path(clone(str(repo), None, "job.yaml", cache=tmp_path / "cache"))
    assert (path / "train.py").read_text() == "print(1)\n"


def _repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    env = {"GIT_AUTHOR_NAME": "a", "GIT_AUTHOR_EMAIL": "a@x", "GIT_COMMITTER_NAME": "a",
           "GIT_COMMITTER_EMAIL": "a@x", "HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    subprocess.run(["git", "init", "-q", str(repo)], check=True, env=env)
    (repo / "train.py").write_text("print(1)\n")
    subprocess.run(["git", "-C", str(repo), "add", "."], check=True, env=env)
    subprocess.run(["git", "-C", str(repo), "commit", "-qm", "x"], check=True, env=env)
    return repo


def _refused(repo: Path, cache: Path, why: str) -> None:
    with pytest.raises(SpecError, match=why) as err:
        clone(str(repo), None, "job.yaml", cache=cache)
    assert err.value.exit_code == 2 and str(cache) in str(err.value)


def test_a_cached_commit_that_is_a_link_elsewhere_is_refused_not_followed(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """`<cache>/<hash>/<commit>` swapped for a link to someone's tree would submit their code as
    the job's: the link is neither followed nor reused."""
    monkeypatch.setenv("HOME", str(tmp_path))
    repo, cache = _repo(tmp_path), tmp_path / "cache"
    path = Path(clone(str(repo), None, "job.yaml", cache=cache))
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "train.py").write_text("import os; os.system('steal')\n")
    shutil.rmtree(path)
    path.symlink_to(evil)
    _refused(repo, cache, "is a symbolic link")


def test_a_cache_root_writable_by_others_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    repo, cache = _repo(tmp_path), tmp_path / "cache"
    cache.mkdir()
    cache.chmod(0o777)
    _refused(repo, cache, "writable by group or others")
    cache.chmod(0o700)
    path = Path(clone(str(repo), None, "job.yaml", cache=cache))
    path.parent.chmod(0o770)  # the repository's directory, group-writable
    _refused(repo, cache, "writable by group or others")


def test_a_cache_root_that_is_a_link_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    repo, real = _repo(tmp_path), tmp_path / "elsewhere"
    real.mkdir(mode=0o700)
    (tmp_path / "cache").symlink_to(real)
    _refused(repo, tmp_path / "cache", "is a symbolic link")
    assert list(real.iterdir()) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="making a directory owned by another user needs root")
def test_a_cache_root_or_commit_owned_by_another_user_is_refused(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    repo, cache = _repo(tmp_path), tmp_path / "cache"
    path = Path(clone(str(repo), None, "job.yaml", cache=cache))
    os.chown(path, 65534, 65534)  # a commit directory someone else made (e.g. in a shared cache)
    _refused(repo, cache, "is owned by uid 65534")
    os.chown(path, 0, 0)
    os.chown(cache, 65534, 65534)
    _refused(repo, cache, "is owned by uid 65534")
