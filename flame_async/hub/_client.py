"""``HubClient``: the one object a Hub user enters; owns the session and the resource groups."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self, get_args
from uuid import UUID

import aiohttp
import anyio

from ..config import RetryPolicy
from ..errors import ConfigError, InvalidArgument, SDKStateError
from ._auth import ClientAuth, Credentials, PasswordAuth, RobotAuth, StaticToken, TokenManager
from ._authup import Auth
from ._core import Core
from ._query import WireCase
from ._resource import Ref, id_of
from ._session import DEFAULT_RETRY, Session
from ._storage import Storage, UploadFile
from .models import Analysis, AnalysisBucket, AnalysisBucketFile, BucketFile

__all__ = ["HubClient"]

_CASES = ("auto", *get_args(WireCase))


class _Open:
    """The parts that exist while the client is open."""

    __slots__ = ("auth", "core", "http", "session", "storage")

    def __init__(self, http: aiohttp.ClientSession, session: Session) -> None:
        self.http = http
        self.session = session
        self.core = Core(session)
        self.storage = Storage(session)
        self.auth = Auth(session)


class HubClient:
    """An asyncio client for the FLAME Hub's auth, core and storage services.

    Use it as an async context manager; it owns one ``aiohttp.ClientSession`` (token requests
    use it too), a semaphore bounding requests in flight, and the retry policy::

        async with HubClient.from_env() as hub:
            nodes = await hub.core.nodes.find_all()

    Args:
        auth_url: The auth service (authup), e.g. ``http://127.0.0.1:3010/``.
        core_url: The core service.
        storage_url: The storage service.
        credentials: Who to log in as (:class:`PasswordAuth`, :class:`RobotAuth`,
            :class:`ClientAuth` or :class:`StaticToken`).
        timeout: Seconds per request; for up- and downloads, per read or write.
        max_concurrency: JSON requests in flight at once (pages of ``iterate``, ``get_many``,
            uploads); streamed downloads are not counted, so reading a stream while making
            other calls cannot deadlock.
        retry: How failed requests are retried (default: 4 tries, 0.2 s backoff doubling,
            full jitter, within 60 s).
        wire_case: The Hub's key casing: ``snake`` (Hubs up to 0.8), ``camel`` (newer), or
            ``auto`` to find out once by reading one record.
        trace_configs: aiohttp trace configs for the session (e.g. to count requests).

    Raises:
        ConfigError: A URL is missing or not http(s), or ``wire_case`` is unknown.
    """

    def __init__(
        self,
        *,
        auth_url: str,
        core_url: str,
        storage_url: str,
        credentials: Credentials,
        timeout: float = 30.0,
        max_concurrency: int = 8,
        retry: RetryPolicy = DEFAULT_RETRY,
        wire_case: WireCase | Literal["auto"] = "auto",
        trace_configs: Sequence[aiohttp.TraceConfig] = (),
    ) -> None:
        problems = []
        urls = {"auth": auth_url, "core": core_url, "storage": storage_url}
        for name, url in urls.items():
            if not url or not str(url).startswith(("http://", "https://")):
                problems.append(f"{name}_url must be an http(s) URL, got {url!r}")
        if wire_case not in _CASES:
            problems.append(f"wire_case must be one of {', '.join(_CASES)}, got {wire_case!r}")
        if timeout <= 0:
            problems.append(f"timeout must be positive, got {timeout!r}")
        if max_concurrency < 1:
            problems.append(f"max_concurrency must be at least 1, got {max_concurrency!r}")
        if problems:
            raise ConfigError(problems, what="Hub client configuration")
        self._urls = urls
        self._credentials = credentials
        self._timeout = timeout
        self._max_concurrency = max_concurrency
        self._retry = retry
        self._wire_case: WireCase | Literal["auto"] = wire_case
        self._trace_configs = list(trace_configs)
        self._open: _Open | None = None
        self._stack: AsyncExitStack | None = None
        self._closed = False

    def __repr__(self) -> str:
        return (
            f"HubClient(core_url={self._urls['core']!r}, credentials={self._credentials!r}, "
            f"wire_case={self._wire_case!r})"
        )

    @classmethod
    def from_env(  # noqa: PLR0912 - one check per variable, read top to bottom
        cls, environ: Mapping[str, str] | None = None, **options: Any
    ) -> HubClient:
        """A client configured from ``FLAME_HUB_*`` variables.

        Reads ``FLAME_HUB_AUTH_URL``, ``FLAME_HUB_CORE_URL``, ``FLAME_HUB_STORAGE_URL``,
        credentials from ``FLAME_HUB_USER``/``FLAME_HUB_PASSWORD``, or
        ``FLAME_HUB_ROBOT_ID``/``FLAME_HUB_ROBOT_SECRET``, or
        ``FLAME_HUB_CLIENT_ID``/``FLAME_HUB_CLIENT_SECRET``, or ``FLAME_HUB_TOKEN``, and
        optionally ``FLAME_HUB_WIRE_CASE``. There are no default URLs.

        Args:
            environ: The variables (``os.environ`` when omitted).
            **options: Further :class:`HubClient` arguments (``timeout``, ``retry``, ...).

        Raises:
            ConfigError: A URL or the credentials are missing; every problem is listed.
        """
        env = os.environ if environ is None else environ
        problems: list[str] = []
        urls: dict[str, str] = {}
        for name in ("auth", "core", "storage"):
            var = f"FLAME_HUB_{name.upper()}_URL"
            value = env.get(var, "").strip()
            if not value:
                problems.append(f"{var} is not set (there is no default Hub)")
            urls[f"{name}_url"] = value
        credentials: Credentials | None = None
        if env.get("FLAME_HUB_USER"):
            if not env.get("FLAME_HUB_PASSWORD"):
                problems.append("FLAME_HUB_USER is set but FLAME_HUB_PASSWORD is not")
            credentials = PasswordAuth(env["FLAME_HUB_USER"], env.get("FLAME_HUB_PASSWORD", ""))
        elif env.get("FLAME_HUB_ROBOT_ID"):
            if not env.get("FLAME_HUB_ROBOT_SECRET"):
                problems.append("FLAME_HUB_ROBOT_ID is set but FLAME_HUB_ROBOT_SECRET is not")
            credentials = RobotAuth(
                env["FLAME_HUB_ROBOT_ID"], env.get("FLAME_HUB_ROBOT_SECRET", "")
            )
        elif env.get("FLAME_HUB_CLIENT_ID"):
            if not env.get("FLAME_HUB_CLIENT_SECRET"):
                problems.append("FLAME_HUB_CLIENT_ID is set but FLAME_HUB_CLIENT_SECRET is not")
            credentials = ClientAuth(
                env["FLAME_HUB_CLIENT_ID"], env.get("FLAME_HUB_CLIENT_SECRET", "")
            )
        elif env.get("FLAME_HUB_TOKEN"):
            credentials = StaticToken(env["FLAME_HUB_TOKEN"])
        else:
            problems.append(
                "no credentials: set FLAME_HUB_USER and FLAME_HUB_PASSWORD, or "
                "FLAME_HUB_ROBOT_ID and FLAME_HUB_ROBOT_SECRET, or FLAME_HUB_CLIENT_ID and "
                "FLAME_HUB_CLIENT_SECRET, or FLAME_HUB_TOKEN"
            )
        case = env.get("FLAME_HUB_WIRE_CASE", "").strip().lower()
        if case and "wire_case" not in options:
            if case not in _CASES:
                problems.append(f"FLAME_HUB_WIRE_CASE must be one of {', '.join(_CASES)}")
            options["wire_case"] = case
        if problems:
            raise ConfigError(problems, what="Hub client configuration")
        assert credentials is not None
        return cls(
            auth_url=urls["auth_url"],
            core_url=urls["core_url"],
            storage_url=urls["storage_url"],
            credentials=credentials,
            **options,
        )

    async def __aenter__(self) -> Self:
        """Open the session.

        Raises:
            SDKStateError: The client was entered before.
        """
        if self._stack is not None or self._closed:
            raise SDKStateError("a HubClient can be entered once")
        stack = AsyncExitStack()
        http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max(16, 2 * self._max_concurrency)),
            trace_configs=self._trace_configs or None,
        )
        stack.push_async_callback(self._close_http, http)
        self._stack = stack
        session = Session(
            http,
            urls=self._urls,  # type: ignore[arg-type]
            credentials=self._credentials,
            timeout=self._timeout,
            max_concurrency=self._max_concurrency,
            retry=self._retry,
            wire_case=self._wire_case,
        )
        self._open = _Open(http, session)
        return self

    @staticmethod
    async def _close_http(http: aiohttp.ClientSession) -> None:
        with anyio.CancelScope(shield=True):
            await http.close()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the session (shielded from cancellation)."""
        await self.aclose()

    async def aclose(self) -> None:
        """Close the session; the client cannot be used afterwards."""
        stack, self._stack, self._open = self._stack, None, None
        self._closed = True
        if stack is not None:
            await stack.aclose()

    def _state(self) -> _Open:
        if self._open is None:
            raise SDKStateError(
                "the HubClient is not open: use it inside 'async with HubClient(...) as hub:'"
            )
        return self._open

    @property
    def core(self) -> Core:
        """The core service's resources (nodes, projects, analyses, ...)."""
        return self._state().core

    @property
    def storage(self) -> Storage:
        """The storage service's resources (buckets, bucket files)."""
        return self._state().storage

    @property
    def auth(self) -> Auth:
        """The auth service's resources (realms, users, robots, ...)."""
        return self._state().auth

    @property
    def tokens(self) -> TokenManager:
        """The token manager (its ``grants`` counts token requests by grant type)."""
        return self._state().session.tokens

    async def wire_case(self) -> WireCase:
        """The Hub's key casing (asked once with ``wire_case="auto"``).

        Raises:
            TransportError: The probe failed.
        """
        return await self._state().session.wire_case()

    # -- workflows -----------------------------------------------------------------------------

    async def start_analysis(
        self,
        project: Ref,
        nodes: Sequence[Ref],
        files: Sequence[UploadFile],
        *,
        entrypoint: str,
        name: str | None = None,
        lock: bool = True,
        **fields: Any,
    ) -> Analysis:
        """Create an analysis with its nodes and code, ready to be built.

        Creates the analysis, adds ``nodes`` as analysis nodes, finds the analysis' CODE
        bucket (creating the storage bucket and its analysis-bucket link when the Hub has not
        done so itself), uploads ``files`` into it, registers them with the analysis
        (``entrypoint`` as the root file) and, with ``lock``, locks the configuration.

        Args:
            project: The project.
            nodes: The nodes to run it on.
            files: The analysis code.
            entrypoint: The name of the file among ``files`` to run.
            name: The analysis' name.
            lock: Lock the configuration at the end (``configurationLock``).
            **fields: Further analysis fields (``master_image_id``, ``description``, ...).

        Raises:
            InvalidArgument: ``entrypoint`` is not among ``files``, or no nodes or files.
            ServiceError: The Hub failed; a Hub of the 0.8 line without RabbitMQ answers the
                lock with 500 ("The amqp instance is not defined"). What was created stays.
            TransportError: A request failed.
        """
        if not nodes:
            raise InvalidArgument("start_analysis() needs at least one node")
        if entrypoint not in {f.name for f in files}:
            raise InvalidArgument(f"the entrypoint {entrypoint!r} is not among the files")
        core, storage = self.core, self.storage
        analysis = await core.analyses.create(project_id=id_of(project), name=name, **fields)
        for node in nodes:
            await core.analysis_nodes.create(analysis_id=analysis.id, node_id=id_of(node))
        code, storage_bucket = await self._code_bucket(analysis)
        uploaded: list[BucketFile] = await storage.buckets.upload(storage_bucket, files)
        by_path = {f.path or f.name: f for f in uploaded}  # storage keeps directories in path
        for upload in files:
            stored = by_path.get(upload.name)
            if stored is None:
                continue
            await core.analysis_bucket_files.create(
                name=upload.name,
                external_id=stored.id,
                bucket_id=code.id,
                root=upload.name == entrypoint,
            )
        if lock:
            return await core.analyses.command(analysis, "configurationLock")
        return await core.analyses.get(analysis)

    async def _code_bucket(self, analysis: Analysis) -> tuple[AnalysisBucket, UUID]:
        """The analysis' CODE bucket link and the storage bucket to upload into.

        The Hub creates the links itself when an analysis is created, and a worker creates
        their storage buckets and sets ``external_id``; without that worker (the 0.8 line
        needs RabbitMQ for it) the link stays empty and cannot be set over REST, so the
        storage bucket is created here and the files are registered with the link directly.
        """
        core = self.core
        found = await core.analysis_buckets.find(
            filter={"analysis_id": analysis.id, "type": "CODE"}, limit=1
        )
        link = found.items[0] if found.items else None
        if link is None:
            link = await core.analysis_buckets.create(analysis_id=analysis.id, type="CODE")
        if link.external_id is not None:
            return link, link.external_id
        bucket = await self.storage.buckets.create(name=f"{analysis.id}-code")
        # newer Hubs take the link; the 0.8 line ignores the field
        link = await core.analysis_buckets.update(link, external_id=bucket.id)
        return link, bucket.id

    async def analysis_files(self, analysis: Ref) -> list[AnalysisBucketFile]:
        """The files registered with the analysis (all its buckets).

        Raises:
            TransportError: A request failed.
        """
        return await self.core.analysis_bucket_files.find_all(
            filter={"analysis_id": id_of(analysis)}
        )

    async def download_results(self, analysis: Ref, dest: Path) -> list[Path]:
        """Download the analysis' RESULT bucket into the directory ``dest`` (unpacked safely).

        Raises:
            NotFoundError: The analysis has no result bucket (yet).
            HubResponseInvalid: The bucket's tar holds an unsafe member.
            TransportError: A request failed.
        """
        aid = id_of(analysis)
        found = await self.core.analysis_buckets.find(
            filter={"analysis_id": aid, "type": "RESULT"}, limit=1
        )
        bucket = found.items[0] if found.items else None
        if bucket is None or bucket.external_id is None:
            from ..errors import NotFoundError

            raise NotFoundError(
                service="hub core",
                method="GET",
                url=self._urls["core"].rstrip("/") + "/analysis-buckets",
                status=404,
                detail=f"analysis {aid} has no RESULT bucket (yet)",
            )
        return await self.storage.buckets.download(bucket.external_id, Path(dest))
