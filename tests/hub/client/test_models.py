"""Hub models survive version skew: both casings, old and new names, unknown and missing fields."""

from __future__ import annotations

import uuid

import pytest

from flame_async.errors import HubResponseInvalid
from flame_async.hub import models
from flame_async.hub._resource import parse
from flame_async.hub.models import Analysis, AnalysisUpdate, Node, NodeCreate, to_wire

AID = str(uuid.uuid4())


def test_snake_and_camel_bodies_give_the_same_model() -> None:
    snake = Node.model_validate({"id": AID, "realm_id": AID, "created_at": "2026-01-01T00:00:00"})
    camel = Node.model_validate({"id": AID, "realmId": AID, "createdAt": "2026-01-01T00:00:00Z"})
    assert snake.realm_id == camel.realm_id
    assert snake.created_at == camel.created_at
    assert snake.created_at is not None
    assert snake.created_at.tzinfo is not None  # naive Hub timestamps are taken as UTC


def test_old_and_new_names_of_renamed_fields_are_both_read() -> None:
    old = Analysis.model_validate({"id": AID, "run_status": "running", "build_nodes_valid": True})
    new = Analysis.model_validate(
        {"id": AID, "executionStatus": "running", "distributionNodesValid": True}
    )
    assert old.execution_status == new.execution_status == "running"
    assert old.distribution_nodes_valid is new.distribution_nodes_valid is True


def test_unknown_fields_are_kept_and_missing_ones_default() -> None:
    node = Node.model_validate({"id": AID, "fancyNewField": [1, 2]})
    assert node.model_extra == {"fancyNewField": [1, 2]}
    assert node.name is None
    assert node.client_id is None  # added in Hub 0.8.22; absent here


def test_relations_are_none_unless_included() -> None:
    bare = Analysis.model_validate({"id": AID, "project_id": AID})
    joined = Analysis.model_validate({"id": AID, "project": {"id": AID, "name": "p"}})
    assert bare.project is None
    assert joined.project is not None
    assert joined.project.name == "p"


def test_a_body_that_does_not_validate_names_the_model_and_the_error() -> None:
    with pytest.raises(HubResponseInvalid, match=r"not a valid Node: id: ") as info:
        parse(Node, {"name": "no id"}, "http://hub/nodes/x")
    assert info.value.model == "Node"
    assert info.value.errors


def test_to_wire_sends_only_the_fields_set_in_the_hub_casing() -> None:
    create = NodeCreate(name="n", realm_id=uuid.UUID(AID), type="default", extra_key=1)
    assert to_wire(create, "camel") == {
        "name": "n",
        "realmId": AID,
        "type": "default",
        "extraKey": 1,
    }
    assert to_wire(AnalysisUpdate(description=None), "snake") == {"description": None}


def test_secrets_of_registries_are_not_in_repr() -> None:
    reg = models.Registry.model_validate({"id": AID, "account_secret": "s3cr3t"})
    assert "s3cr3t" not in repr(reg)


def test_every_model_is_exported_sorted() -> None:
    assert models.__all__ == sorted(models.__all__)
    for name in models.__all__:
        assert getattr(models, name) is not None
