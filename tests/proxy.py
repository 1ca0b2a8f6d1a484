"""A TCP proxy in front of the test server, so a test can cut the database away."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from psycopg.conninfo import conninfo_to_dict, make_conninfo


class Proxy:
    """Forwards 127.0.0.1:<port> to the server of ``url``; ``cut()`` drops everything.

    While cut, new connections are refused (the listener is closed) and live ones
    are reset, as when the server goes away; ``restore()`` listens again on the
    same port.
    """

    def __init__(self, url: str) -> None:
        params = conninfo_to_dict(url)
        self._params = params
        self._host = str(params.get("host") or "localhost")
        self._port = int(params.get("port") or 5432)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._frozen = False

    @property
    def url(self) -> str:
        params: dict[str, Any] = dict(self._params)
        params.update(host="127.0.0.1", port=str(self.port))
        return make_conninfo("", **params)

    async def start(self) -> Proxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._host.startswith("/"):
            return await asyncio.open_unix_connection(f"{self._host}/.s.PGSQL.{self._port}")
        return await asyncio.open_connection(self._host, self._port)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._frozen:  # accepted, never answered
            self._writers.add(writer)
            return
        try:
            up_reader, up_writer = await self._upstream()
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(src, dst), name="test-proxy-pipe")
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        if not self._frozen:
            dst.close()

    async def cut(self) -> None:
        """Refuse new connections and reset the live ones."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)
        for writer in list(self._writers):
            writer.close()
            with contextlib.suppress(OSError, ConnectionError):
                await writer.wait_closed()
        self._writers.clear()
        if server is not None:
            await server.wait_closed()

    async def freeze(self) -> None:
        """Stop answering, as a server that hangs: connections stay open, nothing moves."""
        self._frozen = True
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def restore(self) -> None:
        await self.start()

    async def close(self) -> None:
        await self.cut()
