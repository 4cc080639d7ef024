"""A flamesdk analysis whose analyzer node-2 raises.

flamesdk would log the error and sleep 1000 s while the aggregator waits forever; on the
compatibility layer the run ends at once and names node-2.
"""

from flamesdk import FlameCoreSDK  # type: ignore[import-not-found]  # the compat layer

flame = FlameCoreSDK()
if flame.get_role() == "aggregator":
    flame.await_intermediate_data(flame.get_participant_ids())  # no timeout, as StarModel
elif flame.get_id() == "node-2":
    raise RuntimeError("a bug in the analysis, on purpose")
else:
    flame.send_intermediate_data([flame.get_aggregator_id()], 1)
    while True:  # as StarModel ends
        pass
