"""The local vineyardd's runtime folder and socket are private by construction.

These tests run as root (as CI does): the folders are made by user ``nobody`` (65534) or with
loose modes, as another local user could prepare them before us.
"""

from __future__ import annotations

import grp
import os
import stat
import subprocess

import pytest
from conftest import BIN

from fluid_airflow.exceptions import VineyardDaemonError
from fluid_airflow.vineyard.local.daemon import LocalVineyardd

NOBODY = 65534


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _start_cli(folder) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "fluid-airflow"), "vineyard", "start", "--runtime-dir", str(folder), "--size", "64Mi"],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_folder_made_by_another_user_is_refused_before_anything_starts(runtime):
    folder = runtime / "theirs"
    folder.mkdir(mode=0o777)
    os.chmod(folder, 0o777)
    os.chown(folder, NOBODY, NOBODY)
    done = _start_cli(folder)
    assert done.returncode != 0
    assert f"runtime folder {folder} belongs to" in done.stderr and "uid 65534" in done.stderr
    assert f"rm -r {folder}" in done.stderr  # says what to do
    assert list(folder.iterdir()) == []  # no socket, no pid file: nothing was started


@pytest.mark.parametrize("mode", [0o770, 0o777, 0o722])
def test_a_folder_writable_by_group_or_others_is_refused(runtime, mode):
    folder = runtime / f"loose{mode:o}"
    folder.mkdir()
    os.chmod(folder, mode)
    with pytest.raises(VineyardDaemonError, match=r"is writable by .*chmod 700"):
        LocalVineyardd(folder).start("64Mi")
    assert not (folder / "vineyard.sock").exists()


def test_a_symlink_is_refused(runtime, tmp_path):
    link = runtime / "link"
    link.symlink_to(tmp_path)
    with pytest.raises(VineyardDaemonError, match="not a folder but a link"):
        LocalVineyardd(link).start("64Mi")


def test_a_new_folder_is_0700_and_the_socket_0600(runtime):
    folder = runtime / "fresh" / "fa"
    daemon = LocalVineyardd(folder)
    daemon.start("64Mi")
    try:
        assert _mode(folder) == 0o700
        assert _mode(daemon.socket_path) == 0o600
    finally:
        daemon.stop()


def test_a_socket_group_opens_the_socket_to_that_group_only(runtime):
    group = grp.getgrgid(NOBODY if _has_gid(NOBODY) else os.getgid()).gr_name
    daemon = LocalVineyardd(runtime / "shared", socket_group=group)
    daemon.start("64Mi")
    try:
        assert _mode(daemon.runtime_dir) == 0o710
        assert _mode(daemon.socket_path) == 0o660
        assert os.stat(daemon.socket_path).st_gid == grp.getgrnam(group).gr_gid
    finally:
        daemon.stop()
    with pytest.raises(VineyardDaemonError, match="socket group 'no-such-group-x' does not exist"):
        LocalVineyardd(runtime / "nogroup", socket_group="no-such-group-x").start("64Mi")


def _has_gid(gid: int) -> bool:
    try:
        grp.getgrgid(gid)
    except KeyError:
        return False
    return True
