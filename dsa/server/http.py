"""The HTTP side of `dsa serve`: the listening socket and the uvicorn server.

    sock = bind_socket("127.0.0.1", 8000)          # InputError naming the port and --port when it is taken
    server = make_server(app, log_level="info", shutdown_timeout=30, on_signal=host.begin_shutdown)
    server.run(sockets=[sock])                     # returns after SIGTERM / SIGINT, once the drain is over

The socket is bound before the model loads, so clients reach /health (503) at once and a taken port is an
error before any weight is read. On the first SIGTERM or SIGINT uvicorn stops accepting connections and waits
for the open ones; `on_signal` starts the engine's drain at the same moment, so running requests finish (or
are aborted after the grace period) and their responses end cleanly. A second signal exits at once.
Unlike plain uvicorn, the signal is not raised again afterwards: the command exits 0.
"""
from __future__ import annotations

import errno
import socket
from typing import Callable

from dsa.errors import InputError

GRACE_MARGIN_SECONDS = 5.0  # uvicorn cancels what is still open this long after the engine's grace period
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: any free port)."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                          flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError) as err:
        raise InputError(f"--host {host}: not an address or a known host name ({err})") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(2048)
    except OSError as err:
        sock.close()
        if err.errno == errno.EADDRINUSE:
            raise InputError(f"port {port} on {host} is already in use (another server?); stop it or pick another "
                             "--port") from None
        if err.errno == errno.EACCES:
            raise InputError(f"no permission to listen on port {port} (ports below 1024 need privileges); pick "
                             "another --port") from None
        if err.errno == errno.EADDRNOTAVAIL:
            raise InputError(f"--host {host} is not an address of this machine") from None
        raise InputError(f"cannot listen on {host}:{port} ({err.strerror or err}); check --host and --port") from None
    return sock


def make_server(app, *, log_level: str = "info", shutdown_timeout: float = 30.0,
                on_signal: Callable[[], None] = lambda: None):
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:  # SIGTERM / SIGINT (uvicorn installs it in the main thread)
            if self.should_exit:
                self.force_exit = True
            self.should_exit = True
            on_signal()

    config = uvicorn.Config(app, log_level=log_level, lifespan="on",
                            timeout_graceful_shutdown=int(shutdown_timeout + GRACE_MARGIN_SECONDS))
    return Server(config)


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


__all__ = ["bind_socket", "make_server", "url_of", "LOG_LEVELS"]
