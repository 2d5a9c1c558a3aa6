"""Least privilege for workers: ``--uid``/``--gid``, and Celery's root rule.

``--uid``/``--gid`` (names or numbers) make the worker give up root once it has done
what needs root: after its logging is set up (its log file is given to the user, since
the prefork processes open it again)
and before it consumes anything: in the supervisor before it starts its processes
(they inherit the user), or in a solo worker before it connects. ``--uid`` alone also
takes that user's primary group, and the supplementary groups become the user's own
(``initgroups``), as Celery's ``maybe_drop_privileges`` does. The drop is checked:
a process that could become root again is an error, not a warning.

The root rule (Celery's ``C_FORCE_ROOT``): a worker that would run as root while it
accepts pickle (or another serializer that runs code when it loads) refuses to start,
since anyone who can write to the broker could then run any code as root. ``--allow-root``
(or ``C_FORCE_ROOT`` in the environment) overrides it; dropping privileges with
``--uid`` satisfies it.
"""

from __future__ import annotations

import grp
import os
import pwd
from collections.abc import Iterable
from dataclasses import dataclass

from celeriac.errors import ConfigurationError, SecurityError

# Serializers whose loading runs code chosen by the message's author.
UNSAFE_SERIALIZERS = frozenset({"pickle", "application/x-python-serialize"})
FORCE_ROOT_ENV = "C_FORCE_ROOT"  # Celery's name for --allow-root


@dataclass(frozen=True)
class Identity:
    """The user and group a worker runs as once it has dropped privileges."""

    uid: int | None
    gid: int | None
    user: str | None  # the uid's name, for initgroups (None: no such passwd entry)


def resolve(uid: str | None, gid: str | None) -> Identity:
    """``--uid``/``--gid`` (names or numbers) as numbers; an unknown name is an error."""
    user_entry = _user(uid) if uid is not None else None
    uid_number = user_entry.pw_uid if user_entry is not None else None
    if gid is not None:
        gid_number: int | None = _group(gid)
    else:  # --uid alone: the user's primary group
        gid_number = user_entry.pw_gid if user_entry is not None else None
    return Identity(uid_number, gid_number,
                    user_entry.pw_name if user_entry is not None else None)


def _user(value: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwuid(int(value)) if value.isdigit() else pwd.getpwnam(value)
    except KeyError:
        raise ConfigurationError(f"--uid {value!r}: no such user") from None


def _group(value: str) -> int:
    try:
        return int(value) if value.isdigit() else grp.getgrnam(value).gr_gid
    except KeyError:
        raise ConfigurationError(f"--gid {value!r}: no such group") from None


def check_root(accept_content: Iterable[str], identity: Identity, allow_root: bool) -> None:
    """Refuse (``SecurityError``) to run as root with an unsafe serializer accepted."""
    if os.getuid() != 0 and os.geteuid() != 0:
        return
    if identity.uid not in (None, 0):
        return  # it will not be root when it consumes
    unsafe = sorted(UNSAFE_SERIALIZERS.intersection(accept_content))
    if not unsafe or allow_root or os.environ.get(FORCE_ROOT_ENV):
        return
    raise SecurityError(
        f"refusing to run as root while accept_content includes {', '.join(unsafe)}: "
        "anyone who can write to the broker could run any code as root. Run as another "
        "user (--uid/--gid), take pickle out of accept_content, or pass --allow-root "
        f"({FORCE_ROOT_ENV}=1) if you must")


def drop_privileges(identity: Identity, own: Iterable[str] = ()) -> None:
    """Become ``identity`` for good (a no-op when neither --uid nor --gid was given).

    ``own``: files opened as root that the worker's processes open again after the
    drop (the log file): they are given to ``identity`` first.
    """
    if identity.uid is None and identity.gid is None:
        return
    for path in own:
        if os.path.exists(path):
            os.chown(path, -1 if identity.uid is None else identity.uid,
                     -1 if identity.gid is None else identity.gid)
    try:
        if identity.gid is not None:
            if identity.user is not None:
                os.initgroups(identity.user, identity.gid)
            else:
                os.setgroups([identity.gid])
            os.setgid(identity.gid)
        if identity.uid is not None:
            os.setuid(identity.uid)
    except PermissionError as exc:
        raise SecurityError(f"cannot change to uid {identity.uid} / gid {identity.gid}: "
                            f"{exc.strerror} (only root may)") from None
    if identity.uid not in (None, 0):
        try:
            os.setuid(0)
        except PermissionError:
            return  # as it should be: root cannot be regained
        raise SecurityError("dropped privileges could be regained (setuid(0) worked)")
