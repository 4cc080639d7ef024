"""Chaos mode: the faults real platforms produce, on demand and seeded.

:class:`Faults` says what to inject; :class:`FaultPlan` is one run's dice and counts. The
platform asks the plan at a few points:

* the broker, for each copy of a message it delivers: drop it, deliver it twice, delay it (and
  so reorder it behind later ones); for each webhook attempt: answer 5xx, or reset the
  connection after the node took the copy (the broker retries both, so the node sees it again);
* every node's gateway, for each service request (broker, storage, PO, data): answer 502 or
  503 without serving it (a proxy that lost its upstream, an overloaded service), drop the
  connection before serving it, or serve it and drop the connection before the answer (the
  client cannot tell whether it happened);
* on a schedule: restart the broker (subscriptions are kept, deliveries in flight are lost,
  and for a moment it answers 503), take a node's API off the network for a while;
* tokens live only ``token_lifetime`` seconds, so the pod orchestrator refreshes them mid-run.

Every decision is seeded by :attr:`Faults.seed` and by what it decides about: a message copy
by its sender, receiver, category and the sender's message number (and which resend it is), a
webhook attempt by its copy and attempt number, a service request by its node, route and how
many such requests came before. So a run with the same seed gives every message the same fate,
whatever the timing does to the rest, and a failing run can be replayed (:meth:`Faults.spec` is
printed in ``run.json``). Only what timing itself decides (how many resends happen, how many
log batches are shipped) can differ.
"""

from __future__ import annotations

import dataclasses
import random
import re
import secrets
from collections import Counter
from collections.abc import Iterable
from typing import Final, Literal

from ..errors import InvalidArgument

__all__ = ["ApiOutage", "FaultPlan", "Faults", "ServiceFault", "WebhookFault"]

ServiceFault = Literal["502", "503", "reset-before", "reset-after"]
WebhookFault = Literal["5xx", "reset-after"]

_DURATION: Final = re.compile(r"(?P<value>\d+(?:\.\d+)?)(?P<unit>ms|s)?")
_SPEC_HELP: Final = (
    "write faults as comma-separated key=value, e.g. "
    "'drop=0.1,dup=0.1,delay=0-50ms,webhook-5xx=0.05,broker-restart=5s,seed=42' "
    "(keys: drop, dup, delay, reorder, webhook-5xx, webhook-reset, 5xx, reset, "
    "broker-restart, api-down, token, seed)"
)


def _seconds(text: str, key: str) -> float:
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise InvalidArgument(f"{key}: {text!r} is not a duration such as 50ms or 2.5s")
    value = float(match["value"])
    return value / 1000 if match["unit"] == "ms" else value


def _format_seconds(value: float) -> str:
    return f"{value * 1000:g}ms" if 0 < value < 1 else f"{value:g}s"


def _share(text: str, key: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InvalidArgument(f"{key}: {text!r} is not a share between 0 and 1") from None
    if not 0 <= value <= 1:
        raise InvalidArgument(f"{key}: {value:g} is not a share between 0 and 1")
    return value


@dataclasses.dataclass(frozen=True, slots=True)
class ApiOutage:
    """A node's API off the network: from ``at`` seconds after the start, for ``seconds``.

    Deliveries to it fail like a refused connection (the broker retries), and so do the pod
    orchestrator's calls.
    """

    node_id: str
    at: float
    seconds: float

    def spec(self) -> str:
        """``node-2@3s+1s``."""
        return f"{self.node_id}@{_format_seconds(self.at)}+{_format_seconds(self.seconds)}"


@dataclasses.dataclass(frozen=True, slots=True)
class Faults:
    """What the local platform injects (all off by default).

    Shares are probabilities between 0 and 1, drawn independently for each event.

    Attributes:
        seed: Seeds every decision (a random one when not given; :meth:`spec` shows it).
        drop: Share of message copies the broker loses (the sender resends: no ack came).
        duplicate: Share of copies the broker delivers twice.
        delay: Each copy waits a random time in ``[low, high]`` seconds before delivery.
        reorder: Share of copies held back behind later ones (an extra ``high`` + 50 ms).
        webhook_5xx: Share of webhook attempts answered 503 by "the network" (the broker
            retries them).
        webhook_reset: Share of webhook attempts whose connection resets after the node took
            the copy (the broker retries: the node sees it again).
        service_5xx: Share of service requests (broker, storage, PO, data; not ``/healthz``)
            answered 502 or 503 without being served (the transient kind: clients retry).
        service_reset: Share of service requests whose connection drops, half before and half
            after the service handled them.
        broker_restarts: Seconds after the start at which the broker restarts: deliveries in
            flight are lost, subscriptions kept, and for ``broker_downtime`` seconds it answers
            503.
        broker_downtime: How long a broker restart takes.
        api_outages: Node APIs taken off the network for a while.
        token_lifetime: Seconds a node token lives (the pod orchestrator refreshes it before it
            expires); None: the platform's default.
    """

    seed: int = dataclasses.field(default_factory=lambda: secrets.randbelow(2**31))
    drop: float = 0.0
    duplicate: float = 0.0
    delay: tuple[float, float] = (0.0, 0.0)
    reorder: float = 0.0
    webhook_5xx: float = 0.0
    webhook_reset: float = 0.0
    service_5xx: float = 0.0
    service_reset: float = 0.0
    broker_restarts: tuple[float, ...] = ()
    broker_downtime: float = 0.5
    api_outages: tuple[ApiOutage, ...] = ()
    token_lifetime: float | None = None

    def __post_init__(self) -> None:
        for name in (
            "drop",
            "duplicate",
            "reorder",
            "webhook_5xx",
            "webhook_reset",
            "service_5xx",
            "service_reset",
        ):
            _share(str(getattr(self, name)), name)
        low, high = self.delay
        if not 0 <= low <= high:
            raise InvalidArgument(f"delay: ({low:g}, {high:g}) is not a range 0 <= low <= high")
        if any(t < 0 for t in self.broker_restarts) or self.broker_downtime < 0:
            raise InvalidArgument("broker restarts and their downtime cannot be negative")
        if self.token_lifetime is not None and self.token_lifetime < 3:
            raise InvalidArgument(
                f"token: {self.token_lifetime:g} s is too short for the pod orchestrator to "
                "refresh it (at least 3 s)"
            )

    @classmethod
    def parse(cls, spec: str) -> Faults:
        """Faults from a spec such as ``drop=0.1,dup=0.1,delay=0-50ms,seed=42``.

        Keys: ``drop``, ``dup``, ``delay`` (``50ms`` or ``10ms-50ms``), ``reorder``,
        ``webhook-5xx``, ``webhook-reset``, ``5xx``, ``reset``, ``broker-restart`` (a time,
        repeatable), ``broker-downtime``, ``api-down`` (``node-2@3s+1s``, repeatable),
        ``token`` (a lifetime), ``seed``.

        Raises:
            InvalidArgument: The spec is malformed (the message says which part and how to
                write it).
        """
        values: dict[str, object] = {}
        restarts: list[float] = []
        outages: list[ApiOutage] = []
        shares = {
            "drop": "drop",
            "dup": "duplicate",
            "reorder": "reorder",
            "webhook-5xx": "webhook_5xx",
            "webhook-reset": "webhook_reset",
            "5xx": "service_5xx",
            "reset": "service_reset",
        }
        for item in (part.strip() for part in spec.split(",")):
            if not item:
                continue
            key, sep, value = item.partition("=")
            key = key.strip().lower()
            if not sep or not value.strip():
                raise InvalidArgument(f"faults: {item!r} has no value; {_SPEC_HELP}")
            if key in shares:
                values[shares[key]] = _share(value, key)
            elif key == "delay":
                low, _, high = value.partition("-")
                low_s = _seconds(low, key)
                values["delay"] = (low_s, _seconds(high, key)) if high else (0.0, low_s)
            elif key == "broker-restart":
                restarts.append(_seconds(value, key))
            elif key == "broker-downtime":
                values["broker_downtime"] = _seconds(value, key)
            elif key == "api-down":
                outages.append(_outage(value))
            elif key == "token":
                values["token_lifetime"] = _seconds(value, key)
            elif key == "seed":
                try:
                    values["seed"] = int(value)
                except ValueError:
                    raise InvalidArgument(f"seed: {value!r} is not an integer") from None
            else:
                raise InvalidArgument(f"faults: unknown key {key!r}; {_SPEC_HELP}")
        return cls(
            broker_restarts=tuple(sorted(restarts)),
            api_outages=tuple(outages),
            **values,  # type: ignore[arg-type]
        )

    def spec(self) -> str:
        """The faults as a spec :meth:`parse` reads back (the seed included): replay with it."""
        parts = [f"seed={self.seed}"]
        names = {
            "drop": self.drop,
            "dup": self.duplicate,
            "reorder": self.reorder,
            "webhook-5xx": self.webhook_5xx,
            "webhook-reset": self.webhook_reset,
            "5xx": self.service_5xx,
            "reset": self.service_reset,
        }
        parts.extend(f"{key}={value:g}" for key, value in names.items() if value)
        low, high = self.delay
        if high:
            parts.append(f"delay={_format_seconds(low)}-{_format_seconds(high)}")
        parts.extend(f"broker-restart={_format_seconds(t)}" for t in self.broker_restarts)
        if self.broker_restarts and self.broker_downtime != 0.5:
            parts.append(f"broker-downtime={_format_seconds(self.broker_downtime)}")
        parts.extend(f"api-down={outage.spec()}" for outage in self.api_outages)
        if self.token_lifetime is not None:
            parts.append(f"token={_format_seconds(self.token_lifetime)}")
        return ",".join(parts)

    def check_nodes(self, node_ids: Iterable[str]) -> None:
        """Raise if an API outage names a node the platform does not have.

        Raises:
            InvalidArgument: An unknown node.
        """
        known = set(node_ids)
        unknown = sorted({o.node_id for o in self.api_outages} - known)
        if unknown:
            raise InvalidArgument(
                f"api-down names {', '.join(unknown)}, not a node of this platform "
                f"(nodes: {', '.join(sorted(known))})"
            )


def _outage(text: str) -> ApiOutage:
    node, at, rest = text.partition("@")
    start, plus, length = rest.partition("+")
    if not at or not plus or not node.strip():
        raise InvalidArgument(
            f"api-down: {text!r} is not NODE@START+LENGTH, e.g. api-down=node-2@3s+1s"
        )
    return ApiOutage(node.strip(), _seconds(start, "api-down"), _seconds(length, "api-down"))


class FaultPlan:
    """One run's dice for :class:`Faults`, and what was injected.

    Args:
        faults: What to inject.
        started: The platform's start (monotonic seconds); schedules count from it.
    """

    def __init__(self, faults: Faults, started: float) -> None:
        self.faults = faults
        self.started = started
        self.injected: Counter[str] = Counter()
        """How many faults of each kind were injected so far."""
        self._seen: Counter[str] = Counter()

    def _dice(self, *what: object) -> random.Random:
        """The dice of one decision, seeded by the seed and what is decided about: the same
        message (or request) gets the same fate in every run with this seed, whatever else
        happens meanwhile."""
        key = "/".join(str(part) for part in what)
        return random.Random(f"{self.faults.seed}/{key}")  # noqa: S311 - chaos, not cryptography

    def _occurrence(self, *what: object) -> int:
        """How often this identity came up before (a resend, a retried request)."""
        key = "/".join(str(part) for part in what)
        self._seen[key] += 1
        return self._seen[key]

    def copies(self, recipient: str, identity: tuple[object, ...] = ()) -> list[float]:
        """The delays before each copy of one message to ``recipient`` is delivered: none
        (dropped), one, or two (duplicated).

        Args:
            recipient: The node it goes to.
            identity: What the message is, stable across runs (sender, category, the
                sender's message number, whether it is an acknowledgement); its resends count
                as further occurrences.
        """
        if not (self.faults.drop or self.faults.duplicate or self.faults.reorder) and not any(
            self.faults.delay
        ):
            return [0.0]
        faults = self.faults
        occurrence = self._occurrence("copy", recipient, *identity)
        rng = self._dice("copy", recipient, *identity, occurrence)
        drop, dup, reorder = rng.random(), rng.random(), rng.random()
        low, high = faults.delay
        delays = [rng.uniform(low, high), rng.uniform(low, high)]
        if reorder < faults.reorder:
            self.injected["reorder"] += 1
            delays[0] += high + 0.05
        if drop < faults.drop:
            self.injected["drop"] += 1
            return []
        if dup < faults.duplicate:
            self.injected["duplicate"] += 1
            return delays
        return delays[:1]

    def webhook(
        self, recipient: str, identity: tuple[object, ...] = (), attempt: int = 1
    ) -> WebhookFault | None:
        """What happens to webhook attempt ``attempt`` of one copy to ``recipient`` (see
        :meth:`copies` for ``identity``)."""
        faults = self.faults
        if not (faults.webhook_5xx or faults.webhook_reset):
            return None
        rng = self._dice("webhook", recipient, *identity, attempt)
        error, reset = rng.random(), rng.random()
        if error < faults.webhook_5xx:
            self.injected["webhook-5xx"] += 1
            return "5xx"
        if reset < faults.webhook_reset:
            self.injected["webhook-reset"] += 1
            return "reset-after"
        return None

    def service(self, node: str, method: str = "", route: str = "") -> ServiceFault | None:
        """What happens to one service request through ``node``'s gateway (``route``: the
        first path segments, without object ids; the n-th such request has the same fate in
        every run with this seed)."""
        faults = self.faults
        if not (faults.service_5xx or faults.service_reset):
            return None
        occurrence = self._occurrence("service", node, method, route)
        rng = self._dice("service", node, method, route, occurrence)
        error, reset, which = rng.random(), rng.random(), rng.random()
        if error < faults.service_5xx:
            fault: ServiceFault = "502" if which < 0.5 else "503"
        elif reset < faults.service_reset:
            fault = "reset-before" if which < 0.5 else "reset-after"
        else:
            return None
        self.injected[f"service-{fault}"] += 1
        return fault

    def api_down(self, node: str, now: float) -> bool:
        """True while ``node``'s API is off the network."""
        elapsed = now - self.started
        for outage in self.faults.api_outages:
            if outage.node_id == node and outage.at <= elapsed < outage.at + outage.seconds:
                self.injected["api-down"] += 1
                return True
        return False

    def broker_down(self, now: float) -> bool:
        """True while the broker restarts."""
        elapsed = now - self.started
        downtime = self.faults.broker_downtime
        return any(t <= elapsed < t + downtime for t in self.faults.broker_restarts)

    def record(self) -> dict[str, object]:
        """What ``run.json`` records: the spec to replay with, and the counts."""
        return {"spec": self.faults.spec(), "injected": dict(sorted(self.injected.items()))}
