"""Federated mean, standard deviation and histogram of body weight over FHIR Observations.

The federated pattern (a "star" of summary statistics):

1. Every node searches its own FHIR server for body-weight Observations (LOINC ``29463-7``),
   page by page, and reduces them to a few numbers: count, sum, sum of squares and the counts
   per bin of a histogram whose edges are fixed in this file (so every node bins alike).
2. The analyzer nodes send those numbers to the aggregator as a small broker message. No
   Observation, patient id or single value ever leaves a node.
3. The aggregator adds the summaries up (these statistics are sums, so the combination is
   exact), derives the global mean and sample standard deviation and submits them with the
   global histogram as the final result (a ``.json`` file).

The aggregator (``node-1`` in a local run) is a hospital too: it opens the SDK with
``aggregator_requires_data=True`` and contributes its own summary, so the result covers every
node's data, exactly as if all Observations had been pooled. A node with fewer than
``MIN_COUNT`` usable values sends an empty summary instead of its numbers (so tiny counts are
not disclosed); the result lists such nodes.

Run it on the example data (three nodes; the final result lands in
``flame-out/final/node-1/body_weight_summary.json``)::

    python examples/data/generate.py        # only if examples/data is missing
    flame-async run examples/fhir_mean_histogram.py --nodes 3 --data examples/data
"""

from __future__ import annotations

import asyncio
import math
from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Any

from flame_async import DataSourceKind, FhirClient, FlameSDK

LOINC_CODE = "29463-7"  # Body weight
UNIT = "kg"
BIN_EDGES: tuple[float, ...] = tuple(float(edge) for edge in range(30, 161, 10))
"""Histogram bins ``[30, 40), [40, 50), ..., [150, 160)`` kg; values outside are counted as
``below`` / ``above``."""
USABLE_STATUSES = frozenset({"final", "amended", "corrected"})
"""Observation statuses whose value counts (``entered-in-error``, ``preliminary`` ... do not)."""
MIN_COUNT = 5
PAGE_SIZE = 50
CATEGORY = "weight_summary"


@dataclass
class Summary:
    """What one node reveals: sums and bin counts, nothing per patient."""

    count: int = 0
    total: float = 0.0
    total_sq: float = 0.0
    bins: list[int] = field(default_factory=lambda: [0] * (len(BIN_EDGES) - 1))
    below: int = 0
    above: int = 0

    def add(self, value: float) -> None:
        self.count += 1
        self.total += value
        self.total_sq += value * value
        if value < BIN_EDGES[0]:
            self.below += 1
        elif value >= BIN_EDGES[-1]:
            self.above += 1
        else:
            self.bins[bisect_right(BIN_EDGES, value) - 1] += 1

    def merge(self, other: Summary) -> None:
        self.count += other.count
        self.total += other.total
        self.total_sq += other.total_sq
        self.bins = [a + b for a, b in zip(self.bins, other.bins, strict=True)]
        self.below += other.below
        self.above += other.above

    def to_message(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "total": self.total,
            "total_sq": self.total_sq,
            "bins": self.bins,
            "below": self.below,
            "above": self.above,
        }

    @classmethod
    def from_message(cls, data: dict[str, Any]) -> Summary:
        bins = [int(b) for b in data["bins"]]
        if len(bins) != len(BIN_EDGES) - 1:
            raise ValueError(f"a summary with {len(bins)} bins; this analysis uses different edges")
        return cls(
            count=int(data["count"]),
            total=float(data["total"]),
            total_sq=float(data["total_sq"]),
            bins=bins,
            below=int(data["below"]),
            above=int(data["above"]),
        )


def usable_weight(resource: dict[str, Any]) -> float | None:
    """The Observation's weight in kg, or None if it must not count."""
    if resource.get("resourceType") != "Observation":
        return None
    if resource.get("status") not in USABLE_STATUSES:
        return None
    codings = (resource.get("code") or {}).get("coding") or []
    if not any(c.get("code") == LOINC_CODE for c in codings if isinstance(c, dict)):
        return None  # the server's code search was broader than ours
    quantity = resource.get("valueQuantity") or {}
    value = quantity.get("value")
    if quantity.get("code", quantity.get("unit")) != UNIT or not isinstance(value, int | float):
        return None
    return float(value)


def fhir_client(flame: FlameSDK) -> FhirClient:
    """A client for this node's (first) FHIR data source."""
    for source in flame.get_data_sources():
        if source.kind is DataSourceKind.FHIR:
            client = flame.get_data_client(source)
            if isinstance(client, FhirClient):
                return client
    raise RuntimeError(f"node {flame.node_id} has no FHIR data source")


async def local_summary(flame: FlameSDK) -> Summary:
    """Search this node's Observations (all pages) and summarise the usable weights."""
    summary = Summary()
    query = f"Observation?code={LOINC_CODE}&_count={PAGE_SIZE}"
    # search() follows the Bundles' "next" links, so memory stays at one page
    async for resource in fhir_client(flame).search(query):
        value = usable_weight(resource)
        if value is not None:
            summary.add(value)
    flame.logger.info("%d usable body-weight observations on this node", summary.count)
    if summary.count < MIN_COUNT:
        flame.logger.warning("fewer than %d values: sending an empty summary", MIN_COUNT)
        return Summary()
    return summary


def final_result(summaries: dict[str, Summary]) -> dict[str, Any]:
    """Combine the nodes' summaries into the global statistics."""
    combined = Summary()
    for node in sorted(summaries):
        combined.merge(summaries[node])
    n = combined.count
    mean = combined.total / n if n else math.nan
    # sample variance from the sums; max() guards against a tiny negative rounding error
    variance = max(0.0, (combined.total_sq - combined.total * mean) / (n - 1)) if n > 1 else 0.0
    return {
        "loinc_code": LOINC_CODE,
        "unit": UNIT,
        "count": n,
        "mean": mean,
        "std": math.sqrt(variance),
        "histogram": {
            "bin_edges": list(BIN_EDGES),
            "counts": combined.bins,
            "below": combined.below,
            "above": combined.above,
        },
        "count_per_node": {node: summaries[node].count for node in sorted(summaries)},
        "suppressed_nodes": sorted(node for node, s in summaries.items() if s.count == 0),
    }


async def main() -> dict[str, Any]:
    # every node, the aggregator included, reads its own FHIR data
    async with FlameSDK(aggregator_requires_data=True) as flame:
        if not flame.is_aggregator:
            # analyzer: summarise locally, send the summary, wait for the end of the analysis
            aggregator = flame.get_aggregator_id()
            if aggregator is None:
                raise RuntimeError("this analysis has no aggregator node")
            summary = await local_summary(flame)
            flame.progress.update(0.5)
            report = await flame.send_message(aggregator, summary.to_message(), category=CATEGORY)
            if not report.ok:
                raise RuntimeError(f"the aggregator did not acknowledge the summary: {report}")
            await flame.wait_until_finished(timeout=300)
            return {"count": summary.count}

        # aggregator: its own summary, then one from every analyzer
        summaries = {flame.node_id: await local_summary(flame)}
        flame.progress.update(0.3)
        peers = flame.get_participant_ids()
        flame.logger.info("waiting for summaries from %s", ", ".join(peers))
        answers = await flame.await_messages(peers, category=CATEGORY, timeout=300)
        missing = sorted(node for node, message in answers.items() if message is None)
        if missing:
            raise RuntimeError(f"no summary from {', '.join(missing)}")
        summaries.update(
            {node: Summary.from_message(m.data) for node, m in answers.items() if m is not None}
        )
        flame.progress.update(0.8)

        result = final_result(summaries)
        flame.logger.info(
            "body weight over %d observations: mean %.2f kg, std %.2f kg",
            result["count"],
            result["mean"],
            result["std"],
        )
        await flame.send_result(result, filename="body_weight_summary.json")
        await flame.analysis_finished()
        return {
            "count": result["count"],
            "mean": round(result["mean"], 2),
            "std": round(result["std"], 2),
        }


if __name__ == "__main__":
    asyncio.run(main())
