"""The local vineyardd's folder and socket, private to their owner by construction.

vineyardd's IPC socket has no authentication: whoever can connect to it can read, overwrite and
delete every object (v6d ``src/server/async/socket_server.cc`` @ v0.24.2 checks nothing on
connect). So the folder holding it is treated the way ssh treats ``~/.ssh``: created mode 0700
by its owner; an existing folder owned by someone else, or writable by group or others, is
refused (another user could have made it to read our objects, or planted a socket or a symlink
there); the socket itself is made mode 0600. ``[fluid] socket_group`` (or ``--socket-group``)
grants one group access: the folder becomes 0710 and the socket 0660, both of that group.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from pathlib import Path

from fluid_airflow.exceptions import VineyardDaemonError


def _user(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def group_id(group: str) -> int:
    """The gid of ``group`` (a name or a number).

    :raises VineyardDaemonError: no such group.
    """
    try:
        return int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
    except KeyError:
        raise VineyardDaemonError(
            f"socket group {group!r} does not exist on this machine; create it (groupadd) or set "
            "[fluid] socket_group / --socket-group to an existing group"
        ) from None


def ensure(path: Path, group: str | None = None) -> Path:
    """Create ``path`` (mode 0700, or 0710 of ``group``) or check that the existing one is safe.

    :raises VineyardDaemonError: ``path`` is a symlink or not a folder, is owned by another user,
        or is writable by group or others; the message says how to fix it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    created = False
    try:
        path.mkdir(mode=0o700)
        created = True
    except FileExistsError:
        pass
    info = os.lstat(path)
    fix = f"remove it (rm -r {path}) if you do not need it, or choose another folder with --runtime-dir"
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise VineyardDaemonError(f"runtime folder {path} is not a folder but a link or file; {fix}")
    if info.st_uid != os.getuid():
        raise VineyardDaemonError(
            f"runtime folder {path} belongs to {_user(info.st_uid)}, not to you ({_user(os.getuid())}): "
            f"its owner could read and delete your Vineyard objects or plant a socket there; {fix}"
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not created:
        who = "others" if info.st_mode & stat.S_IWOTH else "its group"
        raise VineyardDaemonError(
            f"runtime folder {path} is writable by {who} "
            f"(mode {stat.S_IMODE(info.st_mode):04o}): anyone who can write there could replace the socket; "
            f"make it private (chmod 700 {path}) or {fix}"
        )
    if group is not None:
        os.chown(path, -1, group_id(group))
        os.chmod(path, 0o710)  # the group may reach the socket, not list or change the folder
    elif stat.S_IMODE(info.st_mode) & 0o077:
        os.chmod(path, 0o700)
    return path


def restrict_socket(socket: Path, group: str | None = None) -> None:
    """Make the IPC socket ``socket`` reachable by its owner only (0600), or also by ``group`` (0660)."""
    if group is not None:
        os.chown(socket, -1, group_id(group))
        os.chmod(socket, 0o660)
    else:
        os.chmod(socket, 0o600)
