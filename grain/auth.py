"""Who may connect as what: the executor's credentials, by role.

Two set-ups:

- **one shared token** (``--token-file`` / ``GRAIN_TOKEN``): every peer that knows it may
  be a client or a worker, and a client's user name is whatever it says. Right for one
  person's cluster; everyone who holds the token is trusted with everything.
- **tokens by role** (``--client-tokens FILE`` and ``--worker-token-file FILE``): each user
  has their own client token (the file names the user, its fair-share weight and limits);
  workers share a separate secret. A client token can never register a worker, the
  worker secret can never submit jobs, and a user is who their token says.

The tokens file has one user per line: ``USER TOKEN [weight=W] [max-cores=N]
[max-queued=N]``; ``#`` starts a comment. Pure parsing here; the executor re-reads the file
on SIGHUP and when it changes.
"""

from __future__ import annotations

import hmac
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from .config import MAX_QUEUED_PER_USER
from .errors import ConfigurationError

DEFAULT_USER = "default"
_NAME_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._@-")


@dataclass(frozen=True)
class UserPolicy:
    """A user's fair-share weight and limits."""

    weight: float = 1.0
    max_cores: int | None = None
    max_queued: int = MAX_QUEUED_PER_USER


@dataclass(frozen=True)
class ClientToken:
    user: str
    token: str
    policy: UserPolicy = field(default_factory=UserPolicy)


def valid_user_name(name: str) -> bool:
    """1-64 characters of letters, digits and ``._@-``."""
    return 0 < len(name) <= 64 and set(name) <= _NAME_OK


def parse_client_tokens(text: str, source: str = "the client tokens file"
                        ) -> dict[str, ClientToken]:
    """Parse a tokens file; ``ConfigurationError`` names the line of any mistake."""
    out: dict[str, ClientToken] = {}
    seen_tokens: dict[str, str] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"{source}, line {n}"
        parts = line.split()
        if len(parts) < 2:
            raise ConfigurationError(f"{where}: expected 'USER TOKEN [weight=W] "
                                     f"[max-cores=N] [max-queued=N]'")
        user, token, *opts = parts
        if not valid_user_name(user):
            raise ConfigurationError(f"{where}: bad user name {user!r} (letters, digits, "
                                     f"'._@-', at most 64)")
        if user in out:
            raise ConfigurationError(f"{where}: user {user!r} listed twice")
        if len(token) < 16:
            raise ConfigurationError(f"{where}: the token of {user!r} is shorter than 16 "
                                     f"characters")
        if token in seen_tokens:
            raise ConfigurationError(f"{where}: {user!r} has the same token as "
                                     f"{seen_tokens[token]!r}")
        seen_tokens[token] = user
        out[user] = ClientToken(user, token, _policy(opts, where))
    return out


def _policy(opts: list[str], where: str) -> UserPolicy:
    weight, max_cores, max_queued = 1.0, None, MAX_QUEUED_PER_USER
    for opt in opts:
        key, _, value = opt.partition("=")
        try:
            if key == "weight":
                weight = float(value)
                if not (math.isfinite(weight) and weight > 0):
                    raise ValueError
            elif key == "max-cores":
                max_cores = int(value)
                if max_cores < 0:
                    raise ValueError
            elif key == "max-queued":
                max_queued = int(value)
                if max_queued < 0:
                    raise ValueError
            else:
                raise ConfigurationError(f"{where}: unknown option {key!r} (weight, "
                                         f"max-cores, max-queued)")
        except ValueError:
            raise ConfigurationError(f"{where}: bad value in {opt!r}") from None
    return UserPolicy(weight, max_cores, max_queued)


def read_secret(path: str, what: str) -> str:
    """A secret from a file (stripped); ``ConfigurationError`` when unreadable or empty."""
    try:
        with open(path) as f:
            secret = f.read().strip()
    except OSError as e:
        raise ConfigurationError(f"cannot read {what} from {path}: {e}") from None
    if not secret:
        raise ConfigurationError(f"{what} file {path} is empty")
    return secret


class Credentials:
    """The executor's view of who may connect as what (see the module docstring)."""

    def __init__(self, *, token: str | None = None,
                 clients: dict[str, ClientToken] | None = None,
                 worker_token: str | None = None) -> None:
        if token is None and (clients is None or worker_token is None):
            raise ConfigurationError(
                "the executor needs a shared token (--token-file / GRAIN_TOKEN), or both "
                "--client-tokens and --worker-token-file (GRAIN_WORKER_TOKEN)")
        self.token = token
        self.clients = clients or {}
        self.worker_token = worker_token if worker_token is not None else token
        if clients and any(hmac.compare_digest(c.token, self.worker_token or "")
                           for c in clients.values()):
            raise ConfigurationError("a client token equals the worker token: they must "
                                     "differ (a client could register as a worker)")
        self._tokens_file: str | None = None
        self._mtime: float | None = None

    @property
    def by_role(self) -> bool:
        """True when clients and workers have separate secrets."""
        return bool(self.clients)

    def keys(self, role: str, user: str | None) -> Sequence[tuple[str, str]]:
        """Secrets a dialer of ``role`` claiming ``user`` may prove (``handshake.Keys``)."""
        if role == "worker" or role == "executor":
            return [("worker", self.worker_token)] if self.worker_token else []
        if not self.clients:   # one shared token: the user is who they say
            name = user if user and valid_user_name(user) else DEFAULT_USER
            return [(name, self.token)] if self.token else []
        if user is not None and user in self.clients:
            return [(user, self.clients[user].token)]
        return [(c.user, c.token) for c in self.clients.values()]

    def policy(self, user: str) -> UserPolicy:
        entry = self.clients.get(user)
        return entry.policy if entry is not None else UserPolicy()

    # -- the tokens file ---------------------------------------------------------------
    @classmethod
    def from_files(cls, *, token: str | None, client_tokens: str | None,
                   worker_token: str | None) -> Credentials:
        clients = None
        if client_tokens:
            with_mtime = _read_tokens(client_tokens)
            clients = with_mtime[0]
        creds = cls(token=token, clients=clients, worker_token=worker_token)
        if client_tokens:
            creds._tokens_file, creds._mtime = client_tokens, with_mtime[1]
        return creds

    def reload_if_changed(self, force: bool = False) -> bool:
        """Re-read the tokens file when it changed (or ``force``). A broken file keeps the
        old tokens (raises ``ConfigurationError`` for the caller to log)."""
        if self._tokens_file is None:
            return False
        try:
            mtime = os.stat(self._tokens_file).st_mtime
        except OSError as e:
            raise ConfigurationError(f"cannot stat {self._tokens_file}: {e}") from None
        if not force and mtime == self._mtime:
            return False
        clients, mtime = _read_tokens(self._tokens_file)
        if any(hmac.compare_digest(c.token, self.worker_token or "") for c in clients.values()):
            raise ConfigurationError("a client token equals the worker token; kept the old "
                                     "tokens")
        self.clients, self._mtime = clients, mtime
        return True


def _read_tokens(path: str) -> tuple[dict[str, ClientToken], float]:
    try:
        with open(path) as f:
            text = f.read()
        mtime = os.stat(path).st_mtime
    except OSError as e:
        raise ConfigurationError(f"cannot read the client tokens file {path}: {e}") from None
    clients = parse_client_tokens(text, path)
    if not clients:
        raise ConfigurationError(f"the client tokens file {path} names no user")
    return clients, mtime
