"""Federated logistic regression with FedAvg (numpy) over each node's S3 table.

The federated pattern (FedAvg, McMahan et al. 2017), for ``ROUNDS`` rounds:

1. The aggregator sends the global weights to every analyzer as an intermediate result (a dict
   of numpy arrays, stored by the result service and announced by a broker message).
2. Each node trains on its own table ``cohort/train.parquet`` (or ``.csv``) from its S3 data
   source: ``LOCAL_EPOCHS`` full-batch gradient-descent steps starting at the global weights.
   It sends back its new weights, its sample count and the loss and accuracy of the global
   weights it received, again as an intermediate result. Rows never leave the node.
3. The aggregator averages the weights, weighted by sample count, logs the round's loss
   (``flame.logger``, shipped to the PO) and reports progress.

After the last round the aggregator sends the final weights once more with ``done`` set; the
nodes only evaluate them and answer. The aggregator then submits the model as the final result
(``logreg_coefficients.parquet``: one row per term with its coefficient on the scaled features,
the scaling, and the coefficient in the features' original units), calls
``analysis_finished()``, and every analyzer leaves through ``wait_until_finished()``.

The aggregator (``node-1`` in a local run) is a hospital too: it opens the SDK with
``aggregator_requires_data=True`` and trains on its own table like every analyzer, so the model
is fitted on all nodes' rows. Features are scaled with fixed reference values (``SCALING``,
part of the analysis like the feature list), so no extra round is needed to agree on them.
Everything is deterministic: zero initial weights, full-batch steps, nodes averaged in id order.

Run it on the example data (three nodes)::

    python examples/data/generate.py        # only if examples/data is missing
    flame-async run examples/fedavg_logreg.py --nodes 3 --data examples/data
"""

from __future__ import annotations

import asyncio
import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from flame_async import DataSourceKind, FlameSDK, S3Client

FEATURES = ("age", "bmi", "glucose", "smoker")
LABEL = "label"
SCALING: dict[str, tuple[float, float]] = {
    "age": (50.0, 15.0),
    "bmi": (27.0, 5.0),
    "glucose": (100.0, 25.0),
    "smoker": (0.0, 1.0),
}
"""``(centre, scale)`` per feature: the model sees ``(value - centre) / scale``."""
TABLE_KEYS = ("cohort/train.parquet", "cohort/train.csv")
"""The S3 keys tried in order: Parquet if the node has it, else CSV."""
ROUNDS = 5
LOCAL_EPOCHS = 20
LEARNING_RATE = 1.0
MODEL = "global_model"  # aggregator -> analyzers
UPDATE = "local_update"  # analyzers -> aggregator
TIMEOUT = 120.0

Vector = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Table:
    """A node's training rows: ``x`` with a leading column of ones, ``y`` in {0, 1}."""

    x: Vector
    y: Vector


@dataclass(frozen=True)
class Update:
    """One node's answer to a round."""

    weights: Vector
    samples: int
    loss: float  # of the global weights it received
    accuracy: float

    def to_arrays(self) -> dict[str, npt.NDArray[Any]]:
        return {
            "weights": self.weights,
            "samples": np.array(self.samples, dtype=np.int64),
            "loss": np.array(self.loss),
            "accuracy": np.array(self.accuracy),
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, npt.NDArray[Any]]) -> Update:
        return cls(
            weights=np.array(arrays["weights"], dtype=np.float64),  # a copy we own
            samples=int(arrays["samples"]),
            loss=float(arrays["loss"]),
            accuracy=float(arrays["accuracy"]),
        )


# ------------------------------------------------------------------ local computation


def design_matrix(frame: pd.DataFrame) -> Table:
    """Scale the features and add the intercept column."""
    columns = [np.ones(len(frame))]
    for name in FEATURES:
        centre, scale = SCALING[name]
        columns.append((frame[name].to_numpy(dtype=np.float64) - centre) / scale)
    return Table(np.column_stack(columns), frame[LABEL].to_numpy(dtype=np.float64))


def evaluate(weights: Vector, table: Table) -> tuple[float, float]:
    """Mean log-loss and accuracy of ``weights`` on ``table``."""
    z = table.x @ weights
    loss = float(np.mean(np.logaddexp(0.0, z) - table.y * z))  # stable log(1 + e^z) - y z
    accuracy = float(np.mean((z > 0) == (table.y > 0.5)))
    return loss, accuracy


def local_update(weights: Vector, table: Table, *, train: bool) -> Update:
    """Evaluate the global weights, then (if ``train``) run local gradient descent."""
    loss, accuracy = evaluate(weights, table)
    new = weights.copy()
    if train:
        for _ in range(LOCAL_EPOCHS):
            probabilities = 1.0 / (1.0 + np.exp(-(table.x @ new)))
            new -= LEARNING_RATE * table.x.T @ (probabilities - table.y) / len(table.y)
    return Update(new, len(table.y), loss, accuracy)


def s3_client(flame: FlameSDK) -> S3Client:
    """A client for this node's (first) S3 data source."""
    for source in flame.get_data_sources():
        if source.kind is DataSourceKind.S3:
            client = flame.get_data_client(source)
            if isinstance(client, S3Client):
                return client
    raise RuntimeError(f"node {flame.node_id} has no S3 data source")


async def load_table(flame: FlameSDK) -> Table:
    """Read this node's training table from its S3 source (Parquet preferred)."""
    s3 = s3_client(flame)
    available = set(await s3.list("cohort/"))
    for key in TABLE_KEYS:
        if key in available:
            raw = io.BytesIO(await s3.get(key))
            read = pd.read_parquet if key.endswith(".parquet") else pd.read_csv
            # parsing and number crunching run in a worker thread: the event loop stays free
            # for messages, acknowledgements and the node's API (and so do the fits below)
            frame = await asyncio.to_thread(read, raw)
            flame.logger.info("training on %d rows of %s", len(frame), key)
            return await asyncio.to_thread(design_matrix, frame)
    raise RuntimeError(f"node {flame.node_id} has none of {', '.join(TABLE_KEYS)}")


# ------------------------------------------------------------------ the two roles


async def analyzer(flame: FlameSDK) -> dict[str, Any]:
    """Answer every round of the aggregator until it sends the final model."""
    aggregator = flame.get_aggregator_id()
    if aggregator is None:
        raise RuntimeError("this analysis has no aggregator node")
    table = await load_table(flame)
    while True:
        model = await flame.await_intermediate_result(aggregator, category=MODEL, timeout=TIMEOUT)
        done = bool(model["done"])
        update = await asyncio.to_thread(
            local_update, np.asarray(model["weights"]), table, train=not done
        )
        await flame.send_intermediate_result(aggregator, update.to_arrays(), category=UPDATE)
        flame.progress.update(min(1.0, int(model["round"]) / (ROUNDS + 1)))
        if done:
            break
    await flame.wait_until_finished(timeout=TIMEOUT)
    return {"samples": update.samples, "accuracy": round(update.accuracy, 3)}


async def federated_round(
    flame: FlameSDK, weights: Vector, table: Table, *, number: int, done: bool
) -> dict[str, Update]:
    """Send the global weights to the analyzers and collect every node's update."""
    peers = flame.get_participant_ids()
    model = {
        "weights": weights,
        "round": np.array(number, dtype=np.int64),
        "done": np.array(done, dtype=np.bool_),
    }
    await flame.send_intermediate_result(peers, model, category=MODEL)
    # the aggregator's own update, computed (off the loop) while the analyzers work on theirs
    updates = {flame.node_id: await asyncio.to_thread(local_update, weights, table, train=not done)}
    answers = await flame.await_intermediate_results(peers, category=UPDATE, timeout=TIMEOUT)
    missing = sorted(node for node, answer in answers.items() if answer is None)
    if missing:
        raise RuntimeError(f"round {number}: no update from {', '.join(missing)}")
    updates.update({node: Update.from_arrays(answer) for node, answer in answers.items()})
    return updates


def average(updates: dict[str, Update]) -> tuple[Vector, float, float]:
    """FedAvg: weights, loss and accuracy averaged by sample count (nodes in id order)."""
    nodes = sorted(updates)
    share = np.array([updates[n].samples for n in nodes], dtype=np.float64)
    share /= share.sum()
    weights: Vector = share @ np.stack([updates[n].weights for n in nodes])
    loss = float(share @ np.array([updates[n].loss for n in nodes]))
    accuracy = float(share @ np.array([updates[n].accuracy for n in nodes]))
    return weights, loss, accuracy


def coefficients(weights: Vector) -> pd.DataFrame:
    """The model as a table, usable without this file: ``p = sigmoid(sum(raw * x) + ...)``."""
    terms = ("intercept", *FEATURES)
    centres = np.array([0.0, *(SCALING[f][0] for f in FEATURES)])
    scales = np.array([1.0, *(SCALING[f][1] for f in FEATURES)])
    raw = weights / scales
    raw[0] = weights[0] - float(np.sum(weights[1:] * centres[1:] / scales[1:]))
    return pd.DataFrame(
        {"coefficient": weights, "centre": centres, "scale": scales, "raw_coefficient": raw},
        index=pd.Index(terms, name="term"),
    )


async def aggregator(flame: FlameSDK) -> dict[str, Any]:
    """Run ``ROUNDS`` FedAvg rounds, evaluate the final model and submit it."""
    table = await load_table(flame)
    weights: Vector = np.zeros(1 + len(FEATURES))
    history: list[float] = []
    flame.progress.update(0.05)
    with flame.progress.phase(0.05, 0.9) as training:
        for number in range(1, ROUNDS + 1):
            updates = await federated_round(flame, weights, table, number=number, done=False)
            weights, loss, accuracy = average(updates)
            history.append(loss)
            flame.logger.info(
                "round %d/%d: loss %.4f, accuracy %.3f of the global model before local "
                "training (%d samples on %d nodes)",
                number,
                ROUNDS,
                loss,
                accuracy,
                sum(u.samples for u in updates.values()),
                len(updates),
            )
            training.update(number / ROUNDS)

    # one more exchange in which the nodes only evaluate the final weights
    final = await federated_round(flame, weights, table, number=ROUNDS + 1, done=True)
    _, loss, accuracy = average(final)
    history.append(loss)
    flame.logger.info("final model: loss %.4f, accuracy %.3f", loss, accuracy)
    await flame.send_result(coefficients(weights), filename="logreg_coefficients.parquet")
    await flame.analysis_finished()
    return {"loss": round(loss, 4), "accuracy": round(accuracy, 3), "loss_history": history}


async def main() -> dict[str, Any]:
    # every node, the aggregator included, trains on its own table
    async with FlameSDK(aggregator_requires_data=True) as flame:
        if flame.is_aggregator:
            return await aggregator(flame)
        return await analyzer(flame)


if __name__ == "__main__":
    asyncio.run(main())
