"""Endpoints: ``grain://host:port`` (TCP, optionally TLS) and ``unix:///path``. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from ..errors import ConfigurationError

DEFAULT_PORT = 4242


@dataclass(frozen=True)
class Endpoint:
    """Where a Grain peer listens: a TCP host and port, or a Unix socket path."""

    host: str = ""
    port: int = DEFAULT_PORT
    path: str | None = None

    def __str__(self) -> str:
        if self.path is not None:
            return f"unix://{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"grain://{host}:{self.port}"

    @property
    def is_unix(self) -> bool:
        return self.path is not None


def parse_endpoint(text: str, default_port: int = DEFAULT_PORT) -> Endpoint:
    """Parse ``grain://host:port``, ``host:port``, ``host`` or ``unix:///path``."""
    text = text.strip()
    if not text:
        raise ConfigurationError("empty address: give grain://HOST:PORT")
    if text.startswith("unix://"):
        path = text[len("unix://"):]
        if not path:
            raise ConfigurationError(f"bad address {text!r}: unix:// needs a path")
        return Endpoint(path=path)
    if "://" not in text:
        text = "grain://" + text
    parts = urlsplit(text)
    if parts.scheme not in ("grain", "tcp"):
        raise ConfigurationError(f"bad address {text!r}: use grain://HOST:PORT or unix:///PATH")
    try:
        port = parts.port
    except ValueError:
        raise ConfigurationError(f"bad address {text!r}: the port must be 0-65535") from None
    host = parts.hostname or ""
    if parts.path not in ("", "/"):
        raise ConfigurationError(f"bad address {text!r}: no path is expected after the port")
    return Endpoint(host=host, port=default_port if port is None else port)
