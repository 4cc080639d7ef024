"""The exceptions flame-async raises.

Every error the SDK raises on purpose derives from :class:`FlameError`. Where the meaning matches a
standard exception, the error also derives from it, so ``except TimeoutError`` or
``except ValueError`` keep working in code that does not know about flame-async.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

__all__ = [
    "AuthenticationError",
    "CodecError",
    "ConfigError",
    "DataAccessError",
    "DataSourceError",
    "FlameError",
    "HubConflict",
    "HubRequestInvalid",
    "HubResponseInvalid",
    "IncompleteResponse",
    "InvalidArgument",
    "MessageTimeout",
    "MessageTooLarge",
    "MissingExtra",
    "NotAggregatorError",
    "NotFoundError",
    "PeerFailed",
    "PermissionDenied",
    "PickleNotAllowed",
    "RemoteError",
    "RequestTimeout",
    "SDKStateError",
    "ServiceError",
    "ServiceUnavailable",
    "StartupError",
    "TransportError",
    "UnknownDataSource",
    "UnknownNodeError",
]


class FlameError(Exception):
    """Root of every error raised by flame-async."""


class ConfigError(FlameError, ValueError):
    """The node configuration (environment variables or overrides) is missing or malformed;
    also raised for a Hub client's configuration (``what`` names which one).

    Attributes:
        problems: One human-readable line per problem found; all problems are reported at once.
    """

    def __init__(self, problems: Iterable[str], *, what: str = "FLAME node configuration") -> None:
        self.problems: tuple[str, ...] = tuple(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid {what}:\n{lines}")


class InvalidArgument(FlameError, ValueError):
    """A caller passed a value the SDK cannot use; raised before any I/O."""


class UnknownNodeError(InvalidArgument):
    """A receiver or sender is not a participant of the analysis (or is this node itself).

    Attributes:
        node_ids: The offending node ids.
    """

    def __init__(self, node_ids: Iterable[str], reason: str) -> None:
        self.node_ids: tuple[str, ...] = tuple(node_ids)
        super().__init__(f"{reason}: {', '.join(self.node_ids)}")


class MessageTooLarge(InvalidArgument):
    """A message is larger than the broker carries inline and cannot travel through the
    storage service (a receiver runs flamesdk, or that path is switched off); raised before
    any I/O.

    Attributes:
        size: The message payload's size in bytes.
        limit: The largest payload sent inline.
    """

    def __init__(self, size: int, limit: int, reason: str) -> None:
        self.size = size
        self.limit = limit
        super().__init__(
            f"the message is {size:,} bytes, more than the {limit:,} bytes a message carries "
            f"inline, and {reason}"
        )


class SDKStateError(FlameError, RuntimeError):
    """The SDK was used outside ``async with FlameSDK()`` or after it closed."""


class NotAggregatorError(FlameError, PermissionError):
    """An aggregator-only operation was called on a node whose role is not ``aggregator``."""


class StartupError(FlameError, ConnectionError):
    """The node could not start: the gateway or a node service never became reachable."""


class TransportError(FlameError):
    """An HTTP exchange with a node service failed.

    Attributes:
        service: Which node service was called (``broker``, ``storage``, ``po``, ``hub-adapter``,
            ``data``, ``gateway``).
        method: The HTTP method.
        url: The URL that was requested.
    """

    def __init__(self, message: str, *, service: str, method: str, url: str) -> None:
        self.service = service
        self.method = method
        self.url = url
        super().__init__(message)


class ServiceUnavailable(TransportError, ConnectionError):
    """The service could not be reached (connection refused or reset, DNS failure)."""


class IncompleteResponse(ServiceUnavailable):
    """The connection broke while the answer's body was being read (it was cut off)."""


class RequestTimeout(TransportError, TimeoutError):
    """The service did not answer within the request timeout."""


class ServiceError(TransportError):
    """The service answered with an HTTP error status.

    Attributes:
        status: The HTTP status code.
        detail: The error text the service sent (its ``detail`` field when it sent JSON; the
            FLAME Hub's ``message``).
        code: The service's own error code, when it sends one (the Hub's ``code``, e.g.
            ``invalid_credentials``); empty otherwise.
        issues: Validation issues the service listed (the Hub's ``issues``); empty otherwise.
        retry_after: Seconds the service asked the client to wait (``Retry-After``), if any.
    """

    def __init__(
        self,
        *,
        service: str,
        method: str,
        url: str,
        status: int,
        detail: str = "",
        code: str = "",
        issues: Sequence[Any] = (),
        retry_after: float | None = None,
    ) -> None:
        self.status = status
        self.detail = detail
        self.code = code
        self.issues: tuple[Any, ...] = tuple(issues)
        self.retry_after = retry_after
        text = f"{service} answered {status} to {method} {url}"
        if code:
            text += f" ({code})"
        if detail:
            text += f": {detail}"
        super().__init__(text, service=service, method=method, url=url)

    @property
    def message(self) -> str:
        """The error text the service sent (the same as :attr:`detail`)."""
        return self.detail


class NotFoundError(ServiceError, LookupError):
    """The service answered 404: the object, node or route does not exist (any more)."""


class AuthenticationError(ServiceError, PermissionError):
    """The service answered 401 or 403: the token is missing, expired or not allowed."""


class PermissionDenied(AuthenticationError):
    """The FLAME Hub answered 403: the caller is authenticated but not allowed to do this."""


class HubRequestInvalid(ServiceError, ValueError):
    """The FLAME Hub refused a request as malformed (400 or 422); :attr:`issues` says why."""


class HubConflict(ServiceError):
    """The FLAME Hub answered 409: the object exists already or the change conflicts."""


class HubResponseInvalid(FlameError):
    """The FLAME Hub answered 2xx with a body that does not fit the expected model.

    A :class:`FlameError`, not a :class:`ServiceError`: the exchange succeeded, its content
    did not make sense to this client (typically a Hub release this client does not know).

    Attributes:
        model: The name of the model the body was validated against.
        url: Where the body came from.
        errors: The first validation errors (pydantic's ``errors()`` entries, at most five).
    """

    def __init__(self, model: str, url: str, errors: Sequence[Any]) -> None:
        self.model = model
        self.url = url
        self.errors: tuple[Any, ...] = tuple(errors)[:5]
        shown = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', e)}"
            if isinstance(e, dict)
            else str(e)
            for e in self.errors
        )
        super().__init__(f"the Hub's answer from {url} is not a valid {model}: {shown}")


class MessageTimeout(FlameError, TimeoutError):
    """A wait for messages ended before every expected sender answered.

    Attributes:
        waiting_for: Node ids that did not answer in time.
        category: The category that was awaited, if any.
    """

    def __init__(self, waiting_for: Iterable[str], *, category: str | None, timeout: float) -> None:
        self.waiting_for: tuple[str, ...] = tuple(waiting_for)
        self.category = category
        self.timeout = timeout
        what = f"category {category!r}" if category else "any category"
        who = ", ".join(self.waiting_for) or "any sender"
        super().__init__(f"no message ({what}) from {who} within {timeout:g} s")


class PeerFailed(FlameError):
    """A peer this node was waiting on has ended (failed, stopped or finished) and will not answer.

    Attributes:
        node_id: The peer, or ``None`` when the platform reported an unidentified partner.
        status: The status the peer reported (``failed``, ``stopped``, ``executed``).
        reason: What the peer said about why, when it said anything.
    """

    def __init__(self, node_id: str | None, status: str, reason: str = "") -> None:
        self.node_id = node_id
        self.status = status
        self.reason = reason
        who = f"node {node_id}" if node_id else "a partner node"
        text = f"{who} reported status {status!r} and will not answer"
        if reason:
            text += f": {reason}"
        super().__init__(text)


class CodecError(FlameError, ValueError):
    """A value cannot be encoded safely, or a payload cannot be decoded."""


class PickleNotAllowed(CodecError):
    """A pickled payload arrived, or pickling was needed, without the caller's explicit opt-in."""


class MissingExtra(FlameError, ImportError):
    """An optional dependency is needed for this value type but is not installed.

    Attributes:
        extra: The flame-async extra that installs it.
    """

    def __init__(self, package: str, extra: str) -> None:
        self.package = package
        self.extra = extra
        super().__init__(
            f"{package} is needed for this but is not installed; install flame-async's "
            f"'{extra}' extra (flame-async[{extra}] in requirements.txt, or "
            f"pip install -e '.[{extra}]' in a clone)"
        )


class DataSourceError(FlameError):
    """A data source is unknown, or reading from it failed."""


class UnknownDataSource(DataSourceError, LookupError):
    """No data source of this node has that id or name (or this node has no data at all)."""


class DataAccessError(DataSourceError, TransportError):
    """Reading a query or key from a data source failed.

    It is also a :class:`TransportError` (service ``data``): the exchange with the node's data
    proxy failed, by an error status or because the connection broke.

    Attributes:
        source: The data source's name.
        target: The FHIR query or S3 key.
        status: The HTTP status the data proxy answered (None for connection failures).
    """

    def __init__(
        self,
        source: str,
        target: str,
        status: int | None,
        detail: str,
        *,
        method: str = "GET",
        url: str = "",
    ) -> None:
        self.source = source
        self.target = target
        self.status = status
        code = f"HTTP {status}" if status is not None else "no answer"
        super().__init__(
            f"reading {target!r} from data source {source!r} failed ({code}): {detail}",
            service="data",
            method=method,
            url=url,
        )


class RemoteError(FlameError):
    """A peer's message handler raised while answering this node's request.

    Attributes:
        node_id: The peer whose handler failed.
        error: The error text the peer sent back.
    """

    def __init__(self, node_id: str, error: str) -> None:
        self.node_id = node_id
        self.error = error
        super().__init__(f"the handler on node {node_id} failed: {error}")
