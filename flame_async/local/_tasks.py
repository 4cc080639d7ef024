"""A task group that may be entered in one task and left in another.

anyio task groups must be exited by the task that entered them, but a platform is often entered
in one task and exited in another (pytest-asyncio runs an async fixture's set-up and tear-down in
different tasks). So the platform's task group lives in a host task of its own, which the
platform starts on enter and awaits on exit: the group's children still run and end under
anyio's structured rules, nothing is left behind.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

import anyio
from anyio.abc import TaskGroup

__all__ = ["HostedTaskGroup"]


class HostedTaskGroup:
    """Async context manager yielding an anyio :class:`~anyio.abc.TaskGroup` run by a host task.

    On exit the group is cancelled and the host task awaited; an exception that escaped a child
    task (children are expected to handle their own) is raised from ``__aexit__``.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._stop = asyncio.Event()
        self._host: asyncio.Task[None] | None = None

    async def __aenter__(self) -> TaskGroup:
        """Start the host task and return its task group once it is running.

        Cancellation: the host task is cancelled and awaited before the cancellation goes on.
        """
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[TaskGroup] = loop.create_future()
        self._host = loop.create_task(self._run(ready), name=self._name)
        try:
            return await ready
        except BaseException:
            self._host.cancel()
            await asyncio.wait([self._host])
            raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Cancel the group and wait until its every task has ended.

        Raises:
            BaseExceptionGroup: A child task failed while the group ran.

        Cancellation: the group is still waited for (its tasks are being cancelled anyway),
        then the cancellation goes on.
        """
        host = self._host
        if host is None:
            return
        self._stop.set()
        try:
            await asyncio.shield(host)
        except asyncio.CancelledError:
            if not host.done():
                await asyncio.wait([host])
            if not host.cancelled():
                host.exception()  # mark it retrieved: the cancellation takes precedence
            raise

    async def _run(self, ready: asyncio.Future[TaskGroup]) -> None:
        async with anyio.create_task_group() as task_group:
            if ready.done():  # __aenter__ was cancelled meanwhile
                return
            ready.set_result(task_group)
            await self._stop.wait()
            task_group.cancel_scope.cancel()
