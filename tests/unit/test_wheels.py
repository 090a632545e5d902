"""Which wheels of the controller's wheelhouse an environment needs (control/wheels.py): exactly the
pins of a uv.lock, the closure of a requirements file or pyproject over the wheels' Requires-Dist,
regular files only."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from hybridctl.control import wheels
from tests.agent.tiny_wheel import WheelIndex, make_wheel


@pytest.fixture
def house(tmp_path: Path) -> Path:
    d = tmp_path / "house"
    make_wheel(d, "hc_top", "1.0", requires=("hc-mid>=1", "hc_extra; extra == 'x'"))
    make_wheel(d, "hc_mid", "1.0", requires=("hc.leaf",))
    make_wheel(d, "hc_mid", "2.0", requires=("hc.leaf",))
    make_wheel(d, "hc_leaf", "1.0")
    make_wheel(d, "hc_extra", "1.0")
    make_wheel(d, "hc_other", "1.0")
    (d / "README.txt").write_text("not a wheel")
    return d


@pytest.fixture
def wheel_index(house: Path) -> Iterator[str]:
    index = WheelIndex(house)
    yield index.url
    index.close()


def names(chosen: list) -> list:
    return sorted(w.filename for w in chosen)


def test_a_requirements_file_gets_the_closure_of_what_it_names(house: Path) -> None:
    files = {"requirements.txt": b"# deps\nHC-Top==1.0  # pinned\n--index-url http://127.0.0.1:9/\n-r more.txt\n"}
    chosen = wheels.needed("requirements", files, wheels.scan(str(house)))
    assert names(chosen) == ["hc_extra-1.0-py3-none-any.whl", "hc_leaf-1.0-py3-none-any.whl",
                             "hc_mid-1.0-py3-none-any.whl", "hc_mid-2.0-py3-none-any.whl",
                             "hc_top-1.0-py3-none-any.whl"]  # a superset: uv resolves on the node
    assert wheels.needed("requirements", {"requirements.txt": b"hc_leaf\n"}, wheels.scan(str(house)))[0].name \
        == "hc-leaf"


def test_a_pyproject_names_its_dependencies_and_extras(house: Path) -> None:
    text = b'[project]\nname = "x"\nversion = "0"\ndependencies = ["hc-leaf"]\n' \
           b'[project.optional-dependencies]\ndev = ["hc-other>=1"]\n'
    assert names(wheels.needed("pyproject", {"pyproject.toml": text}, wheels.scan(str(house)))) == [
        "hc_leaf-1.0-py3-none-any.whl", "hc_other-1.0-py3-none-any.whl"]


def test_a_uv_lock_gets_exactly_its_pins(house: Path, tmp_path: Path) -> None:
    from hybridctl_agent.envs import find_uv
    from tests.conftest import require

    uv = find_uv(None, os.environ.get("PATH", ""))
    require(uv is not None, "uv is not installed")
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "pyproject.toml").write_text('[project]\nname = "demo"\nversion = "0.1"\nrequires-python = ">=3.8"\n'
                                         'dependencies = ["hc-top", "hc-mid<2"]\n')
    subprocess.run([uv, "lock", "--offline", "--no-index", "--find-links", str(house), "--project", str(proj),
                    "--no-config"], check=True, capture_output=True)
    files = {"uv.lock": (proj / "uv.lock").read_bytes()}
    assert names(wheels.needed("uv_lock", files, wheels.scan(str(house)))) == [
        "hc_leaf-1.0-py3-none-any.whl", "hc_mid-1.0-py3-none-any.whl", "hc_top-1.0-py3-none-any.whl"]


def test_links_and_other_files_in_the_wheelhouse_are_skipped(house: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("not for nodes")
    (house / "hc_secret-1.0-py3-none-any.whl").symlink_to(secret)
    (house / "hc_dir-1.0-py3-none-any.whl").mkdir()
    found = {w.filename for w in wheels.scan(str(house))}
    assert "hc_secret-1.0-py3-none-any.whl" not in found and "hc_dir-1.0-py3-none-any.whl" not in found
    assert "README.txt" not in found and len(found) == 6


def test_wheel_file_names_parse_to_normalized_names(house: Path) -> None:
    assert wheels.parse_filename("Foo_Bar-1.2.post1-py3-none-any.whl") == ("foo-bar", "1.2.post1")
    assert wheels.parse_filename("torch-2.3.0+cu121-1-cp311-cp311-linux_x86_64.whl") == ("torch", "2.3.0+cu121")
    assert wheels.parse_filename("../evil-1.0-py3-none-any.whl") is None
    assert wheels.parse_filename("x.tar.gz") is None
    w = wheels.scan(str(house))[0]
    import hashlib

    assert wheels.sha256(w) == hashlib.sha256(Path(w.path).read_bytes()).hexdigest()


def test_a_missing_wheelhouse_and_a_broken_lock_say_what(tmp_path: Path) -> None:
    with pytest.raises(wheels.WheelsFailed, match="environments.wheelhouse .*/nope"):
        wheels.scan(str(tmp_path / "nope"))
    with pytest.raises(wheels.WheelsFailed, match="uv.lock is not TOML"):
        wheels.needed("uv_lock", {"uv.lock": b"[[package\n"}, [])


def test_only_names_and_version_specifiers_go_to_pip(house: Path) -> None:
    text = (b"hc_top==1.0\nhc-leaf==7.0\nhc-extra>=0\nnewpkg >= 2, <3 ; python_version >= '3.8'\nExtra_Pkg[a,b]~=1.4\n"
            b"-r /etc/shadow\n--index-url http://evil/\nevil @ file:///etc/passwd\n"
            b"git+https://example.com/x.git\n./local/dir\n/abs/path.whl\nbad==1.0; $(reboot)\n")
    specs, exact = wheels.download_specs("requirements", {"requirements.txt": text}, wheels.scan(str(house)))
    # hc-top 1.0 and an hc-extra are in the wheelhouse, hc-leaf 7.0 is not; the rest are rebuilt
    # from what the pattern accepted
    assert specs == ["bad==1.0", "extra-pkg~=1.4", "hc-leaf==7.0", "newpkg>=2,<3"] and not exact


def test_a_lock_asks_pip_for_exactly_the_missing_pins(house: Path) -> None:
    lock = (b'version = 1\n[[package]]\nname = "hc-top"\nversion = "1.0"\n'
            b'[[package]]\nname = "numpy"\nversion = "2.1.0"\n[[package]]\nname = "hc-mid"\nversion = "9.9"\n')
    specs, exact = wheels.download_specs("uv_lock", {"uv.lock": lock}, wheels.scan(str(house)))
    assert specs == ["hc-mid==9.9", "numpy==2.1.0"] and exact


def test_download_fetches_wheels_from_an_index_once(house: Path, tmp_path: Path, wheel_index: str) -> None:
    dest = tmp_path / "home" / "wheels"
    new = wheels.download(["hc-top==1.0"], dest, wheel_index, None, False)
    assert new == ["hc_leaf-1.0-py3-none-any.whl", "hc_mid-2.0-py3-none-any.whl", "hc_top-1.0-py3-none-any.whl"]
    assert wheels.download(["hc-top==1.0"], dest, wheel_index, None, False) == []  # present: none new
    assert oct(dest.stat().st_mode & 0o777) == "0o700"
    with pytest.raises(wheels.WheelsFailed, match="pip download of hc-nope==1 failed: .*hc-nope"):
        wheels.download(["hc-nope==1"], dest, wheel_index, None, False)
