"""The systemd notify protocol (READY=1, WATCHDOG=1, STATUS=, STOPPING=1) without a library.

Does nothing when not started by systemd (no $NOTIFY_SOCKET).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket


class Notifier:
    def __init__(self) -> None:
        address = os.environ.get("NOTIFY_SOCKET")
        if address and address.startswith("@"):
            address = "\0" + address[1:]  # abstract namespace
        self._address = address
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        # systemd wants a ping at least every WATCHDOG_USEC; halve it for slack.
        self.watchdog_interval = (
            int(usec) / 2e6 if usec and (pid is None or int(pid) == os.getpid()) else None
        )

    def send(self, message: str) -> None:
        if not self._address:
            return
        # If systemd went away there is nobody to tell.
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock, contextlib.suppress(OSError):
            sock.sendto(message.encode(), self._address)

    def ready(self) -> None:
        self.send("READY=1")

    def status(self, text: str) -> None:
        self.send(f"STATUS={text}")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    async def keep_alive(self) -> None:
        if self.watchdog_interval is None:
            return
        while True:
            self.send("WATCHDOG=1")
            await asyncio.sleep(self.watchdog_interval)
