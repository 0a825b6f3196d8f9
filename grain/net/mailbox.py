"""The mailboxes of ``grain.net.link``: where a link's messages wait, in order, for the
task that takes them in batches. Pure trio, no I/O."""

from __future__ import annotations

import trio

from ..protocol.frames import Message


class LinkClosed(Exception):
    """The link is closed; ``reason`` says why."""


class Mailbox:
    """Messages one side puts and the other takes in batches (a link's inbox or outbox),
    and why it closed."""

    __slots__ = ("items", "event", "closed", "taken")

    def __init__(self) -> None:
        self.items: list[Message] = []
        self.event = trio.Event()
        self.closed: str | None = None
        self.taken: trio.Event | None = None   # set when the consumer takes the items

    def put(self, msg: Message) -> None:
        items = self.items
        items.append(msg)
        if len(items) == 1:
            self.event.set()

    def put_many(self, msgs: list[Message]) -> None:
        if msgs:
            self.items.extend(msgs)
            self.event.set()

    def close(self, reason: str) -> None:
        if self.closed is None:
            self.closed = reason
        self.event.set()

    async def take(self) -> list[Message]:
        while not self.items:
            if self.closed is not None:
                raise LinkClosed(self.closed)
            await self.event.wait()
            self.event = trio.Event()
        items, self.items = self.items, []
        if self.taken is not None:
            self.taken.set()
            self.taken = None
        return items

    async def wait_taken(self) -> None:
        """Until the consumer has taken what is in the box."""
        if self.items and self.closed is None:
            if self.taken is None:
                self.taken = trio.Event()
            await self.taken.wait()
