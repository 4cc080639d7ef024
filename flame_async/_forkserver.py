"""Start node processes fast: fork them from a server that has imported flame-async once.

``flame-async run --mode processes`` runs ``python SCRIPT`` per node. A fresh interpreter
spends most of a CPU second importing flame-async, aiohttp and pydantic before the analysis
does anything; with twenty nodes on two cores that is several seconds before the last node is
up. A fork server pays that once per run.

The rules:

* **One server per run**, started by :func:`open_launcher` as ``python -c ...`` with the
  runner's environment. It imports flame-async and its dependencies, then runs a plain
  blocking loop: no event loop and no thread, so that ``fork()`` is safe. It refuses (and the
  runner falls back to ``python SCRIPT``) when an import failed or started a thread.
* **Control is one Unix socket pair** (``SOCK_SEQPACKET``: one JSON message per packet). The
  runner asks ``start`` with the Python arguments (``SCRIPT ARGS`` or ``-c CODE ARGS``), the
  working folder, the environment (as changes to the server's own) and, as ``SCM_RIGHTS``, the
  write ends of the child's stdout and stderr pipes. The server forks and answers ``started``
  with the pid; when it reaps the child it sends ``exit`` with the exit code
  (``-N`` for signal N, as :attr:`subprocess.Popen.returncode`).
* **Signals go through the server** (``signal``): the server is the child's parent, so the
  pid cannot have been reused before the server reaped it. Without the server, the runner
  signals the pid itself.
* **The child is** ``python SCRIPT``: ``__name__ == "__main__"``, ``sys.argv`` and
  ``sys.orig_argv`` as given, the script's folder first on ``sys.path``, ``os.environ``
  replaced, stdin ``/dev/null``, stdout and stderr the runner's pipes, the interpreter's
  signal handlers, and ``SystemExit``, uncaught exceptions (traceback from the script's frames,
  exit 1) and ``KeyboardInterrupt`` handled as the interpreter does; the interpreter's shutdown
  (threads joined, ``atexit``) runs as usual.
* **The server ends when the runner's end closes**: children still running get ``SIGTERM``,
  then ``SIGKILL`` after a grace period, and are reaped; so a runner that is killed leaves no
  node behind.

``FLAME_ASYNC_FORKSERVER=0`` switches the fork server off; it is only used on Linux.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import errno
import gc
import importlib
import itertools
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import types
from collections.abc import AsyncIterator, Mapping, Sequence
from importlib.machinery import BuiltinImporter, SourceFileLoader
from typing import Any, Final, Protocol

import anyio
import anyio.abc
from anyio.abc import ByteReceiveStream

from .local._tasks import HostedTaskGroup

__all__ = [
    "FORKSERVER_ENV",
    "ForkServer",
    "Launcher",
    "NodeProcess",
    "SpawnLauncher",
    "open_launcher",
    "serve",
]

log = logging.getLogger("flame_async.forkserver")

FORKSERVER_ENV: Final = "FLAME_ASYNC_FORKSERVER"
"""Set to ``0`` to start every node as ``python SCRIPT`` instead."""

_PRELOAD: Final = (
    "flame_async",
    "flame_async.sdk",
    "aiohttp",
    "aiohttp.web",
    "pydantic",
    "orjson",
    "anyio",
    "anyio._backends._asyncio",
    "anyio.lowlevel",
    "anyio.streams.memory",
    "anyio.to_thread",
    "asyncio",
    "queue",
)
"""What every node imports (measured: the modules a node has loaded when its run ends)."""

_MAX_MESSAGE: Final = 256 * 1024
"""The largest control message (a request carries only the changes to the environment)."""

_CHILD_FDS: Final = 2
"""A start request carries the child's stdout and stderr."""

_SHUTDOWN_GRACE: Final = 5.0
"""Seconds children get after SIGTERM when the runner has gone, before SIGKILL."""

_SERVER_GRACE: Final = 10.0
"""Seconds the runner waits for the server to end after closing its end (it needs at most
:data:`_SHUTDOWN_GRACE` for children that still run)."""

_READY_TIMEOUT: Final = 60.0
"""Seconds the server may take to import flame-async before the runner gives up on it."""

_SERVER_CODE: Final = """\
# flame-async fork server: forks the nodes of 'flame-async run --mode processes'
import sys
if sys.path and sys.path[0] == "":  # as for 'python SCRIPT': the current folder is not searched
    del sys.path[0]
try:
    from flame_async._forkserver import serve
except Exception as exc:
    import json, socket
    reason = "cannot import flame_async: " + type(exc).__name__ + ": " + str(exc)
    socket.socket(fileno=FD).send(json.dumps(dict(op="unavailable", reason=reason)).encode())
else:
    serve(FD)
"""


# -- the runner's side ---------------------------------------------------------------------------


class NodeProcess(Protocol):
    """A node's process, as the runner uses it (a subset of :class:`anyio.abc.Process`)."""

    @property
    def pid(self) -> int:
        """The process id."""
        ...

    @property
    def returncode(self) -> int | None:
        """The exit code (``-N`` for signal N) once the process has ended, else None."""
        ...

    @property
    def stdout(self) -> ByteReceiveStream | None:
        """What the process writes to its stdout."""
        ...

    @property
    def stderr(self) -> ByteReceiveStream | None:
        """What the process writes to its stderr."""
        ...

    async def wait(self) -> int:
        """Wait until the process has ended; its exit code."""
        ...

    def terminate(self) -> None:
        """Send SIGTERM (unless it has ended)."""
        ...

    def kill(self) -> None:
        """Send SIGKILL (unless it has ended)."""
        ...

    async def aclose(self) -> None:
        """Close the process's streams and wait for it to end."""
        ...


class Launcher(Protocol):
    """Starts ``python ARGS`` processes for a run."""

    async def start(self, args: Sequence[str], *, env: Mapping[str, str]) -> NodeProcess:
        """Start ``python ARGS`` with ``env`` as its whole environment, in the current folder,
        stdin ``/dev/null`` and stdout and stderr piped to the caller.

        Raises:
            OSError: The process could not be started.
        """
        ...


class SpawnLauncher:
    """``python ARGS`` as a new interpreter per process (the fallback, and off Linux)."""

    async def start(self, args: Sequence[str], *, env: Mapping[str, str]) -> NodeProcess:
        """Start a new interpreter.

        Raises:
            OSError: The process could not be started.
        """
        return await anyio.open_process(
            [sys.executable, *args],
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )


def fork_server_unavailable(environ: Mapping[str, str]) -> str | None:
    """Why the fork server is not used here, or None when it is."""
    if environ.get(FORKSERVER_ENV, "").strip().lower() in ("0", "false", "no", "off"):
        return f"{FORKSERVER_ENV}={environ[FORKSERVER_ENV]}"
    if sys.platform != "linux":
        # fork() without exec() is unsafe on macOS once system frameworks are loaded
        return f"no fork server on {sys.platform}"
    if not hasattr(socket, "SOCK_SEQPACKET") or not hasattr(socket, "send_fds"):
        return "no SOCK_SEQPACKET Unix sockets"
    return None


@contextlib.asynccontextmanager
async def open_launcher(environ: Mapping[str, str] | None = None) -> AsyncIterator[Launcher]:
    """The launcher of one run: a fork server where it can be used, else :class:`SpawnLauncher`.

    Every process started through it must have ended before the context exits (the runner
    waits for its nodes); the fork server ends with it.

    Args:
        environ: The environment the fork server starts with (default ``os.environ``).

    Cancellation:
        The fork server is stopped (what still runs under it is terminated) and reaped,
        shielded and bounded, before the cancellation goes on.
    """
    environ = os.environ if environ is None else environ
    reason = fork_server_unavailable(environ)
    if reason is not None:
        log.debug("node processes start as 'python SCRIPT' (%s)", reason)
        yield SpawnLauncher()
        return
    async with _fork_server(environ) as server:
        yield server if server is not None else SpawnLauncher()


@contextlib.asynccontextmanager
async def _fork_server(environ: Mapping[str, str]) -> AsyncIterator[ForkServer | None]:
    """A running fork server, or None (with a warning) when it could not start."""
    env = {**environ, "PYTHONUNBUFFERED": "1"}
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with ours:
        try:
            with theirs:
                process = await anyio.open_process(
                    [sys.executable, "-c", _SERVER_CODE.replace("FD", str(theirs.fileno()))],
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=None,  # the server prints nothing, unless it crashes
                    pass_fds=(theirs.fileno(),),
                )
        except OSError as exc:
            log.warning("cannot start the fork server (%s): nodes start as 'python SCRIPT'", exc)
            process = None
        if process is None:
            yield None
            return
        ours.setblocking(False)
        server = ForkServer(ours, env)
        try:
            # a hosted group: the caller's errors leave the 'async with' as they are, not grouped
            async with HostedTaskGroup("flame_async fork server") as tg:
                try:
                    with anyio.fail_after(_READY_TIMEOUT):
                        await tg.start(server.read_answers)
                except (_ServerUnavailable, TimeoutError) as exc:
                    log.warning("no fork server (%s): nodes start as 'python SCRIPT'", exc)
                    usable = None
                else:
                    usable = server
                try:
                    yield usable
                finally:
                    with anyio.CancelScope(shield=True):
                        server.finish()
                        with anyio.move_on_after(_SERVER_GRACE):
                            await process.wait()
                            await server.done.wait()  # its last answers are read
                        if process.returncode is None:
                            process.kill()
                            await process.wait()
                        server.forget()
        finally:
            with anyio.CancelScope(shield=True):
                if process.returncode is None:
                    process.kill()
                await process.aclose()


class _ServerUnavailable(Exception):
    """The fork server could not be used (the reason is the message)."""


@dataclasses.dataclass(slots=True)
class _Pending:
    """A start request waiting for its answer."""

    stdout: int
    stderr: int
    answered: anyio.Event = dataclasses.field(default_factory=anyio.Event)
    process: _ForkedProcess | None = None
    error: OSError | None = None


class ForkServer:
    """The runner's end of a fork server: start processes, signal them, learn how they ended.

    Built by :func:`open_launcher`; :meth:`read_answers` runs in its task group.
    """

    def __init__(self, control: socket.socket, env: Mapping[str, str]) -> None:
        self._control = control
        self._env = dict(env)
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._processes: dict[int, _ForkedProcess] = {}
        self._sending = anyio.Lock()
        self._finished = False
        self.done = anyio.Event()
        """Set once :meth:`read_answers` has returned: nothing more will be answered."""
        self.pid: int | None = None
        """The server's process id, once it is ready."""

    async def start(self, args: Sequence[str], *, env: Mapping[str, str]) -> NodeProcess:
        """Fork ``python ARGS`` from the server.

        Raises:
            OSError: The server could not fork, or has ended.

        Cancellation:
            Once asked, the server forks: the request waits (shielded; the server answers
            within milliseconds) for the pid, so that the process is owned; a cancellation
            then reaches the caller at its next checkpoint, with the process to terminate.
        """
        if self.done.is_set():
            raise OSError(errno.EPIPE, "the fork server has ended")
        request_id = next(self._ids)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        for fd in (out_r, err_r):
            os.set_blocking(fd, False)
        pending = self._pending[request_id] = _Pending(out_r, err_r)
        changed = {k: v for k, v in env.items() if self._env.get(k) != v}
        removed = [k for k in self._env if k not in env]
        request = {
            "op": "start",
            "id": request_id,
            "args": list(args),
            "cwd": os.getcwd(),
            "env": changed,
            "unset": removed,
        }
        try:
            with anyio.CancelScope(shield=True):
                try:
                    await self._send(request, fds=(out_w, err_w))
                finally:
                    os.close(out_w)
                    os.close(err_w)
                await pending.answered.wait()
        except BaseException:
            self._pending.pop(request_id, None)
            os.close(out_r)
            os.close(err_r)
            raise
        if pending.process is None:
            os.close(out_r)
            os.close(err_r)
            raise pending.error or OSError(errno.EPIPE, "the fork server has ended")
        return pending.process

    async def read_answers(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """Read the server's answers until it ends; ready once the server has imported
        everything.

        Raises:
            _ServerUnavailable: (before ready) The server refused or ended while starting.
        """
        try:
            hello = await self._receive()
            if hello is None:
                raise _ServerUnavailable("it ended while it started")
            if hello.get("op") != "ready":
                raise _ServerUnavailable(str(hello.get("reason", hello)))
            self.pid = int(hello["pid"])
            task_status.started()
            while (answer := await self._receive()) is not None:
                self._answered(answer)
            if not self._finished:
                log.warning("the fork server ended unexpectedly; its node processes are killed")
            self.forget()
        finally:
            self.done.set()

    def _answered(self, answer: dict[str, Any]) -> None:
        op = answer.get("op")
        pending = self._pending.pop(answer["id"], None) if "id" in answer else None
        if op == "started" and pending is not None:
            pid = int(answer["pid"])
            process = _ForkedProcess(self, pid, pending.stdout, pending.stderr)
            self._processes[pid] = pending.process = process
            pending.answered.set()
        elif op == "failed" and pending is not None:
            pending.error = OSError(answer.get("errno") or errno.EIO, answer["error"])
            pending.answered.set()
        elif op == "exit" and (ended := self._processes.pop(int(answer["pid"]), None)):
            ended.ended(int(answer["code"]))

    def forget(self) -> None:
        """Nothing more will be answered: what waits for an answer fails, and a process not
        known to have ended is killed (by pid: the server, its parent, has gone)."""
        for pending in self._pending.values():
            pending.error = OSError(errno.EPIPE, "the fork server has ended")
            pending.answered.set()
        self._pending.clear()
        for process in self._processes.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
            process.ended(-signal.SIGKILL)
        self._processes.clear()

    def signal(self, pid: int, signum: int) -> None:
        """Send ``signum`` to a child of the server (it signals only a child it has not
        reaped, so never a reused pid); when the server cannot be told, the pid directly."""
        data = json.dumps({"op": "signal", "pid": pid, "signal": int(signum)}).encode()
        try:
            self._control.send(data)
        except OSError:  # gone, or (never, with packets this small) full
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def finish(self) -> None:
        """Close the runner's side: the server stops what still runs, and ends."""
        self._finished = True
        with contextlib.suppress(OSError):
            self._control.shutdown(socket.SHUT_WR)

    async def _send(self, message: dict[str, Any], *, fds: Sequence[int] = ()) -> None:
        data = json.dumps(message).encode()
        async with self._sending:
            while True:
                try:
                    socket.send_fds(self._control, [data], list(fds))
                except BlockingIOError:
                    await anyio.wait_writable(self._control)
                else:
                    return

    async def _receive(self) -> dict[str, Any] | None:
        while True:
            try:
                data = self._control.recv(_MAX_MESSAGE)
            except BlockingIOError:
                await anyio.wait_readable(self._control)
            except ConnectionResetError:
                return None
            else:
                return json.loads(data) if data else None


class _PipeStream(ByteReceiveStream):
    """The read end of a child's pipe (non-blocking), read in the event loop."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    async def receive(self, max_bytes: int = 65536) -> bytes:
        """The next bytes written to the pipe.

        Raises:
            anyio.EndOfStream: Every writer has closed it.
            anyio.ClosedResourceError: It was closed here.
        """
        while True:
            if self._fd is None:
                raise anyio.ClosedResourceError
            try:
                data = os.read(self._fd, max_bytes)
            except BlockingIOError:
                await anyio.wait_readable(self._fd)
                continue
            if not data:
                raise anyio.EndOfStream
            return data

    async def aclose(self) -> None:
        """Close the read end."""
        fd, self._fd = self._fd, None
        if fd is not None:
            anyio.notify_closing(fd)
            os.close(fd)
        await anyio.lowlevel.checkpoint()


class _ForkedProcess:
    """A child of the fork server, as the runner sees it."""

    def __init__(self, server: ForkServer, pid: int, stdout: int, stderr: int) -> None:
        self._server = server
        self._pid = pid
        self._returncode: int | None = None
        self._exited = anyio.Event()
        self._stdout = _PipeStream(stdout)
        self._stderr = _PipeStream(stderr)

    @property
    def pid(self) -> int:
        """The process id."""
        return self._pid

    @property
    def returncode(self) -> int | None:
        """The exit code once the process has ended, else None."""
        return self._returncode

    @property
    def stdout(self) -> ByteReceiveStream:
        """The process's stdout."""
        return self._stdout

    @property
    def stderr(self) -> ByteReceiveStream:
        """The process's stderr."""
        return self._stderr

    def ended(self, code: int) -> None:
        """The server reaped the process."""
        self._returncode = code
        self._exited.set()

    async def wait(self) -> int:
        """Wait until the process has ended; its exit code."""
        await self._exited.wait()
        assert self._returncode is not None
        return self._returncode

    def send_signal(self, signum: int) -> None:
        """Send ``signum`` unless the process has ended."""
        if self._returncode is None:
            self._server.signal(self._pid, signum)

    def terminate(self) -> None:
        """Send SIGTERM unless the process has ended."""
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """Send SIGKILL unless the process has ended."""
        self.send_signal(signal.SIGKILL)

    async def aclose(self) -> None:
        """Close the streams and wait for the process to end (killing it when cancelled).

        Cancellation: the process is killed and reaped, shielded, before it goes on.
        """
        with anyio.CancelScope(shield=True):
            await self._stdout.aclose()
            await self._stderr.aclose()
        try:
            await self.wait()
        except BaseException:
            self.kill()
            with anyio.CancelScope(shield=True):
                await self.wait()
            raise


# -- the server's side ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class _Job:
    """What a forked child runs: ``python ARGS``."""

    args: tuple[str, ...]


def serve(fd: int) -> None:
    """The fork server's main program (``fd`` is its end of the control socket).

    Returns when the runner's end has closed; in a forked child, runs the child's job
    instead, which ends the child as the interpreter would end ``python ARGS``.
    """
    job = _Server(socket.socket(fileno=fd)).run()
    if job is not None:
        _run(job)


def _noop(signum: int, frame: types.FrameType | None) -> None:
    """A handler, so that SIGCHLD writes to the wakeup pipe."""


class _Server:
    """The blocking loop that forks children on request and reports how they ended."""

    def __init__(self, control: socket.socket) -> None:
        self._control = control
        self._children: set[int] = set()
        self._wake_r = self._wake_w = -1
        # what 'python SCRIPT', started by the runner, would have: the interpreter's handler,
        # or SIG_IGN when the runner was started with Ctrl-C ignored (in the background)
        self._sigint = signal.getsignal(signal.SIGINT)

    def run(self) -> _Job | None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the runner's; it stops us
        problem = _preload()
        if problem is not None:
            self._send({"op": "unavailable", "reason": problem})
            return None
        gc.collect()
        gc.freeze()  # the imported heap stays shared with the children (copy-on-write)
        self._wake_r, self._wake_w = os.pipe()
        for fd in (self._wake_r, self._wake_w):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, _noop)
        self._send({"op": "ready", "pid": os.getpid()})
        poller = select.poll()
        poller.register(self._control, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        while True:
            for fd, _ in poller.poll():
                if fd == self._wake_r:
                    self._drain_wakeups()
                    self._reap()
                    continue
                try:
                    data, fds, _, _ = socket.recv_fds(self._control, _MAX_MESSAGE, _CHILD_FDS)
                except ConnectionResetError:
                    data, fds = b"", []
                if not data:
                    self._shut_down()
                    return None
                job = self._handle(json.loads(data), fds)
                if job is not None:
                    return job  # in the child

    def _handle(self, request: dict[str, Any], fds: list[int]) -> _Job | None:
        op = request.get("op")
        if op == "signal":
            pid = int(request["pid"])
            if pid in self._children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, int(request["signal"]))
            return None
        if op != "start" or len(fds) != _CHILD_FDS:
            for fd in fds:
                os.close(fd)
            return None
        try:
            pid = os.fork()
        except OSError as exc:
            for fd in fds:
                os.close(fd)
            self._send({"op": "failed", "id": request["id"], "errno": exc.errno, "error": str(exc)})
            return None
        if pid == 0:
            try:
                return self._become_child(request, fds)
            except BaseException:  # noqa: BLE001 - never back into the server's loop
                traceback.print_exc()
                os._exit(127)
        for fd in fds:
            os.close(fd)
        self._children.add(pid)
        self._send({"op": "started", "id": request["id"], "pid": pid})
        return None

    def _become_child(self, request: dict[str, Any], fds: list[int]) -> _Job:
        """Turn the freshly forked child into the process ``python ARGS`` would be."""
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, self._sigint or signal.default_int_handler)
        os.close(self._wake_r)
        os.close(self._wake_w)
        self._control.close()
        stdout, stderr = fds
        os.dup2(stdout, 1)
        os.dup2(stderr, 2)
        for fd in fds:
            if fd > 2:
                os.close(fd)
        os.chdir(request["cwd"])
        for key in request["unset"]:
            os.environ.pop(key, None)
        os.environ.update(request["env"])
        return _Job(tuple(request["args"]))

    def _drain_wakeups(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_r, 512):
                pass

    def _reap(self) -> None:
        while self._children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self._children.discard(pid)
            self._send({"op": "exit", "pid": pid, "code": os.waitstatus_to_exitcode(status)})

    def _shut_down(self) -> None:
        """The runner has gone: stop what still runs (SIGTERM, then SIGKILL), reap it."""
        for pid in self._children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + _SHUTDOWN_GRACE
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        while self._children and (left := deadline - time.monotonic()) > 0:
            poller.poll(left * 1000)
            self._drain_wakeups()
            self._reap()
        for pid in self._children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in sorted(self._children):
            with contextlib.suppress(ChildProcessError):
                _, status = os.waitpid(pid, 0)
                self._send({"op": "exit", "pid": pid, "code": os.waitstatus_to_exitcode(status)})
        self._children.clear()

    def _send(self, message: dict[str, Any]) -> None:
        with contextlib.suppress(OSError):  # the runner has gone: nobody to tell
            self._control.send(json.dumps(message).encode())


def _preload() -> str | None:
    """Import what every node imports; why forking is not safe, or None."""
    for name in _PRELOAD:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - the reason is reported to the runner
            return f"importing {name} failed: {type(exc).__name__}: {exc}"
    if threading.active_count() != 1:
        names = ", ".join(t.name for t in threading.enumerate())
        return f"importing flame-async started threads ({names}): forking is not safe"
    return None


def _run(job: _Job) -> None:
    """Run ``python ARGS`` in this (forked) process, as the interpreter would.

    Raises:
        SystemExit: How the script ended: its own exit code, 1 after an uncaught exception
            (its traceback printed from the script's frames), 2 when the file cannot be read.
        KeyboardInterrupt: Uncaught in the script (the interpreter then ends by SIGINT).
    """
    args = job.args
    sys.orig_argv = [sys.executable, *args]
    main = types.ModuleType("__main__")
    main.__builtins__ = builtins  # type: ignore[attr-defined]
    source: str | bytes
    if args[0] == "-c":
        source, filename = args[1], "<string>"
        sys.argv = ["-c", *args[2:]]
        main.__loader__ = BuiltinImporter
        if not sys.flags.safe_path:
            sys.path.insert(0, "")
    else:
        filename = os.path.abspath(args[0])
        sys.argv = list(args)
        if not sys.flags.safe_path:
            sys.path.insert(0, os.path.dirname(os.path.realpath(filename)))
        try:
            with open(filename, "rb") as file:
                source = file.read()
        except OSError as exc:
            sys.stderr.write(
                f"{sys.executable}: can't open file {filename!r}: [Errno {exc.errno}] "
                f"{exc.strerror}\n"
            )
            raise SystemExit(2) from None
        main.__file__ = filename
        main.__cached__ = None  # type: ignore[attr-defined]
        main.__loader__ = SourceFileLoader("__main__", filename)
    main.__package__ = None
    main.__spec__ = None
    sys.modules["__main__"] = main
    try:
        # dont_inherit: this module's 'from __future__' imports are not the script's
        code = compile(source, filename, "exec", dont_inherit=True)
        exec(code, main.__dict__)  # noqa: S102 - running the analysis is the point
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException as exc:  # noqa: BLE001 - as the interpreter: print it, exit 1
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename != filename:
            tb = tb.tb_next
        exc.__traceback__ = tb  # the hook prints the exception's own traceback
        sys.excepthook(type(exc), exc, tb)
        raise SystemExit(1) from None
