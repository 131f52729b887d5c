"""Who may do what through the local API: roles from Unix users/groups, or from a token.

The API owns this policy (the console is one of its clients); its config section keeps
the name ``console:`` that site configs already use.

Config (optional; without it the API's default holds: root and the daemon's own user are
engineers, everyone else a viewer)::

    console:
      roles:
        engineer: [alice, autogrid-eng]     # user or group names
        operator: [shift, autogrid-ops]
        viewer: [guest]                     # explicit: even root or the daemon user
      default_role: viewer                  # anyone not listed (root/daemon user excepted)
      tokens:                               # for callers without a Unix account of their own
        - name: night-shift                 # shown and audited as this name
          role: operator
          sha256: 5e884898da28...           # sha256 of the token, never the token itself

The daemon sets ``api.role_of`` and ``api.token_caller`` from it (component "console",
in gateway.apicomponent).
A token is sent by the client in every request as ``"token": "..."``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import grp
import hashlib
import hmac
import os
import pwd
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from gateway.api import Caller

Role = Literal["viewer", "operator", "engineer"]
ORDER: tuple[Role, ...] = ("engineer", "operator", "viewer")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Token(_Strict):
    name: str
    role: Role
    sha256: Annotated[str, Field(pattern=r"^[0-9a-fA-F]{64}$")]


class ConsoleSettings(_Strict):
    roles: dict[Role, list[str]] = Field(default_factory=dict)
    default_role: Role = "viewer"
    tokens: list[Token] = Field(default_factory=list)


def names_of(uid: int, gid: int) -> set[str]:
    """The user's name and the names of its primary and supplementary groups."""
    names: set[str] = set()
    user = None
    try:
        user = pwd.getpwuid(uid).pw_name
        names.add(user)
    except (KeyError, OverflowError):
        names.add(str(uid))
    gids = {gid}
    if user is not None:
        with contextlib.suppress(OSError):
            gids.update(os.getgrouplist(user, gid))
    for g in gids:
        try:
            names.add(grp.getgrgid(g).gr_name)
        except (KeyError, OverflowError):
            continue
    return names


def role_policy(settings: ConsoleSettings) -> Callable[[int, int], str]:
    """role_of(uid, gid): the highest role whose list names the user or one of its groups;
    otherwise engineer for root and the daemon's user, else ``default_role``."""
    def role_of(uid: int, gid: int) -> str:
        names = names_of(uid, gid)
        for role in ORDER:
            if names & set(settings.roles.get(role, [])):
                return role
        if uid in (0, os.getuid()):
            return "engineer"
        return settings.default_role
    return role_of


def token_policy(settings: ConsoleSettings) -> Callable[[str, Caller], Caller]:
    """token_caller(token, caller): the caller with the token's name and role; an unknown
    token is refused (raises ApiError), never silently downgraded."""
    from gateway.api import ApiError

    def token_caller(token: str, caller: Caller) -> Caller:
        digest = hashlib.sha256(token.encode()).hexdigest()
        for t in settings.tokens:
            if hmac.compare_digest(digest, t.sha256.lower()):
                return dataclasses.replace(caller, user=f"{t.name} (token, {caller.user})",
                                           role=t.role)
        raise ApiError("the token is not valid for this gateway")
    return token_caller
