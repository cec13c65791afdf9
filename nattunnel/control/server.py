"""The control socket: a Unix stream socket, mode 0600 (only its owner, root for a system
service, may steer the endpoint), one request and one answer per connection
(``nattunnel.control.protocol``).

Each request goes to the handler the application gives (``nattunnel.app.Node.handle``); a
ControlError it raises is the answer's error, any other exception is logged with its
traceback and answered as an internal error: nothing a client sends stops the server or the
endpoint. At most MAX_CLIENTS connections at once, each with READ_TIMEOUT to send its request.
A socket file left by an endpoint that is gone is replaced; one that answers is another
endpoint's, and starting fails with a message that says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

from .protocol import MAX_REQUEST, ControlError, encode, parse_request

log = logging.getLogger("nattunnel")

MAX_CLIENTS: Final = 16
READ_TIMEOUT: Final = 5.0

Handler = Callable[[dict[str, Any]], Awaitable[object]]


def _in_use(path: Path) -> bool:
    """Whether a live endpoint answers on the socket at ``path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


class ControlServer:
    def __init__(self, path: Path, handler: Handler) -> None:
        self.path = path
        self.handler = handler
        self._server: asyncio.AbstractServer | None = None
        self._inode: tuple[int, int] | None = None
        self._clients = 0
        #: requests answered, refused (malformed, too long, too many clients) and failed
        #: with an internal error
        self.counters = {"requests": 0, "refused": 0, "internal_errors": 0}

    async def start(self) -> None:
        """Listen at ``path`` (its directory is made, mode 0755, if missing). OSError if
        another endpoint listens there or the socket cannot be made."""
        path = self.path
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        if path.exists() or path.is_symlink():
            if not stat.S_ISSOCK(path.lstat().st_mode):
                raise OSError(errno.EEXIST, "exists and is not a socket")
            if _in_use(path):
                raise OSError(errno.EADDRINUSE, "another nattunnel answers there")
            path.unlink()  # left by an endpoint that is gone
        old = os.umask(0o177)  # the socket is made 0600: no moment with a wider mode
        try:
            self._server = await asyncio.start_unix_server(self._client, path=str(path),
                                                           limit=MAX_REQUEST + 1)
        finally:
            os.umask(old)
        st = path.stat()
        self._inode = (st.st_dev, st.st_ino)

    def close(self) -> None:
        """Stop listening and remove the socket file (if it is still ours). Idempotent."""
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._inode is not None:
            with contextlib.suppress(OSError):
                st = self.path.stat()
                if (st.st_dev, st.st_ino) == self._inode:
                    self.path.unlink()
            self._inode = None

    async def _client(self, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        try:
            if self._clients >= MAX_CLIENTS:
                self.counters["refused"] += 1
                writer.write(encode({"ok": False, "error": "too many control connections"}))
                return
            self._clients += 1
            try:
                writer.write(encode(await self._answer(reader)))
                await writer.drain()
            finally:
                self._clients -= 1
        except (OSError, asyncio.IncompleteReadError) as e:  # a client that went away
            log.debug("control connection closed early: %s", e)
        except Exception:  # never the server's end
            self.counters["internal_errors"] += 1
            log.error("internal error on a control connection", exc_info=True)
        finally:
            writer.close()

    async def _answer(self, reader: asyncio.StreamReader) -> dict[str, object]:
        try:
            line = await asyncio.wait_for(reader.readuntil(b"\n"), READ_TIMEOUT)
        except (asyncio.LimitOverrunError, ValueError):
            self.counters["refused"] += 1
            return {"ok": False, "error": f"the request is longer than {MAX_REQUEST} octets"}
        except (asyncio.IncompleteReadError, TimeoutError):
            self.counters["refused"] += 1
            return {"ok": False, "error": "no complete request line"}
        try:
            req = parse_request(line)
            result = await self.handler(req)
        except ControlError as e:
            self.counters["refused"] += 1
            return {"ok": False, "error": str(e)}
        except Exception:
            self.counters["internal_errors"] += 1
            log.error("internal error answering a control request", exc_info=True)
            return {"ok": False, "error": "internal error (logged by the endpoint)"}
        self.counters["requests"] += 1
        return {"ok": True, "result": result}
