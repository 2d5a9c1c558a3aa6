"""worker/privileges.py: --uid/--gid resolved, and the root rule."""

from __future__ import annotations

import grp
import os
import pwd

import pytest

from celeriac.errors import ConfigurationError, SecurityError
from celeriac.worker.privileges import Identity, check_root, resolve

NOBODY = pwd.getpwnam("nobody")


def test_names_and_numbers_resolve_and_uid_alone_takes_the_users_group() -> None:
    assert resolve("nobody", None) == Identity(NOBODY.pw_uid, NOBODY.pw_gid, "nobody")
    assert resolve(str(NOBODY.pw_uid), None) == Identity(NOBODY.pw_uid, NOBODY.pw_gid,
                                                         "nobody")
    group = grp.getgrgid(NOBODY.pw_gid).gr_name
    assert resolve(None, group) == Identity(None, NOBODY.pw_gid, None)
    assert resolve(None, None) == Identity(None, None, None)


def test_an_unknown_user_or_group_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="no such user"):
        resolve("no-such-user-celeriac", None)
    with pytest.raises(ConfigurationError, match="no such group"):
        resolve(None, "no-such-group-celeriac")


@pytest.mark.skipif(os.getuid() != 0, reason="the rule is about root")
def test_the_root_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("C_FORCE_ROOT", raising=False)
    none = Identity(None, None, None)
    check_root(["json"], none, allow_root=False)  # no pickle: fine
    with pytest.raises(SecurityError, match="refusing to run as root"):
        check_root(["json", "pickle"], none, allow_root=False)
    check_root(["pickle"], none, allow_root=True)
    check_root(["pickle"], resolve("nobody", None), allow_root=False)  # drops root
    monkeypatch.setenv("C_FORCE_ROOT", "1")
    check_root(["pickle"], none, allow_root=False)
