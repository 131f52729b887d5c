"""A simulated linebus device: a real TCP server on 127.0.0.1 speaking the protocol."""

from __future__ import annotations

import asyncio
import json


class LineBusDevice:
    """Registers per unit id; serves READ and WRITE until closed."""

    def __init__(self, registers: dict[int, dict[str, float]]) -> None:
        self.registers = registers
        self.requests = 0
        self._server: asyncio.Server | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        self._server = await asyncio.start_server(self._serve, host, port)
        return int(self._server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := (await reader.readline()).decode().split():
                self.requests += 1
                writer.write((self._answer(line) + "\n").encode())
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    def _answer(self, words: list[str]) -> str:
        try:
            regs = self.registers[int(words[1])]
            if words[0] == "WRITE":
                regs[words[2]] = float(words[3])
            elif words[0] != "READ":
                return f"ERR unknown command {words[0]}"
        except (IndexError, KeyError, ValueError):
            return "ERR bad request"
        return json.dumps(regs)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
