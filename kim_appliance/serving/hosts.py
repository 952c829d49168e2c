"""Which ``Host`` (and ``Origin``) values name a listener: the defence against DNS rebinding.

A listener on the loopback address is reachable from any web page the user opens, through a
host name the attacker controls that resolves to 127.0.0.1. A request whose ``Host`` header
does not name the listener itself (its bound ``host:port``, ``localhost:port``, or a loopback
address with the port) is such a request, and the console and the admin APIs refuse it. This
module only answers "is this one of mine"; it must never decide what a request may do.
"""

from __future__ import annotations

from collections.abc import Iterable


class AllowedHosts:
    """The ``Host`` values (and so origins) that name one listener. Filled once the port is
    known (port 0 binds a free one); until then every request is refused."""

    def __init__(self) -> None:
        self._hosts: frozenset[str] = frozenset()

    def set_bound(self, host: str, port: int, extra: Iterable[str] = ()) -> None:
        """Allow ``host:port``, ``localhost:port`` and the loopback addresses with ``port``."""
        bracketed = f"[{host}]" if ":" in host else host
        names = {
            f"{bracketed}:{port}",
            f"localhost:{port}",
            f"127.0.0.1:{port}",
            f"[::1]:{port}",
            *extra,
        }
        self._hosts = frozenset(n.lower() for n in names)

    def __contains__(self, host: object) -> bool:
        return isinstance(host, str) and host.lower() in self._hosts

    def names(self) -> list[str]:
        return sorted(self._hosts)
