"""Every service bounds what it reads, names the limit it applies, and answers bad input 4xx.

Where a behaviour does not depend on how a request travels, the test runs over HTTP and in
memory (the ``caller`` fixture also goes through the shared port); what only HTTP can carry
(control characters in a part header, over-long header lines) is sent as raw bytes.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from flame_async._transport import Multipart, Part, Request
from flame_async.config import FlameConfig
from flame_async.errors import InvalidArgument
from flame_async.local import DataFolderError, LocalPlatform
from flame_async.local._po import TRUNCATED

from .helpers import Answer, Caller, FormSpec, StartApi, StartPlatform, Via, eventually

MiB = 1 << 20


@pytest.fixture(params=["port", "memory"])
def via(request: pytest.FixtureRequest) -> Via:
    return request.param  # type: ignore[no-any-return]


async def called(
    start_platform: StartPlatform, stack: AsyncExitStack, via: Via, **options: Any
) -> Caller:
    transport = "memory" if via == "memory" else "http"
    return await Caller.start(stack, await start_platform(3, transport=transport, **options), via)


# -- broker ----------------------------------------------------------------------------------


def test_the_message_limit_is_the_node_apis_body_limit_by_default() -> None:
    default = FlameConfig.model_fields["max_api_body_bytes"].default
    assert default == 16 * MiB
    assert LocalPlatform(2).max_message_bytes == default
    assert LocalPlatform(2, max_message_bytes=1000).max_message_bytes == 1000
    for bad in (0, -1, 1.5, True, "1000"):
        with pytest.raises(InvalidArgument, match="max_message_bytes"):
            LocalPlatform(2, max_message_bytes=bad)  # type: ignore[arg-type]


async def test_a_message_over_the_limit_is_refused_at_send_time_not_dropped_later(
    start_platform: StartPlatform, stack: AsyncExitStack, via: Via, start_api: StartApi
) -> None:
    caller = await called(start_platform, stack, via, max_message_bytes=1000)
    platform = caller.platform
    if via != "memory":
        await start_api(platform.node("node-2"))
    webhook = {"webhookUrl": f"{platform.node('node-2').gateway_url}/analysis/webhook"}
    subscriptions = caller.broker("/messages/subscriptions")
    assert (
        await caller.call("node-2", "POST", subscriptions, as_node="node-2", json=webhook)
    ).status == 201

    def send(size: int) -> Any:
        message = "m" * (size - 2)  # its JSON is the string in quotes: ``size`` bytes
        return caller.call(
            "node-1",
            "POST",
            caller.broker("/messages"),
            as_node="node-1",
            json={"recipients": ["node-2"], "message": message},
        )

    refused: Answer = await send(1001)
    assert refused.status == 413
    assert refused.detail.startswith(
        "the message is 1001 bytes as JSON; the broker delivers at most 1000 bytes"
    )
    assert "send large data through storage" in refused.detail
    assert (await send(1000)).status == 202
    await eventually(lambda: platform.deliveries)
    (event,) = platform.deliveries  # only the accepted one: nothing was taken and dropped
    assert event.size == 1000


async def test_a_send_body_far_over_the_limit_is_refused_before_it_is_read(
    start_platform: StartPlatform, stack: AsyncExitStack, via: Via
) -> None:
    caller = await called(start_platform, stack, via, max_message_bytes=1000)
    body = b'{"recipients": ["node-2"], "message": "' + b"m" * (3 * 1024 * 1024) + b'"}'
    answer = await caller.call(
        "node-1",
        "POST",
        caller.broker("/messages"),
        as_node="node-1",
        body=body,
        headers={"content-type": "application/json"},
    )
    assert answer.status == 413
    assert f"this body is {len(body)} bytes" in answer.detail
    # room for 20,000 recipient ids besides the message
    assert "a message of at most 1000 bytes, plus 2564 KiB for the recipients" in answer.detail


@pytest.mark.parametrize("depth", [300, 1000, 2000])
async def test_deeply_nested_messages_are_refused_with_400(caller: Caller, depth: int) -> None:
    body = b'{"recipients": ["node-2"], "message": ' + b"[" * depth + b"]" * depth + b"}"
    answer = await caller.call(
        "node-1",
        "POST",
        caller.broker("/messages"),
        as_node="node-1",
        body=body,
        headers={"content-type": "application/json"},
    )
    assert answer.status == 400
    assert answer.detail.startswith(
        ("the message cannot be delivered as JSON", "the body is not valid JSON")
    )


async def test_subscriptions_are_bounded_per_node_and_in_length(caller: Caller) -> None:
    path = caller.broker("/messages/subscriptions")
    long_url = "http://127.0.0.1:1/" + "a" * 2100
    answer = await caller.call(
        "node-1", "POST", path, as_node="node-1", json={"webhookUrl": long_url}
    )
    assert (answer.status, answer.detail) == (
        400,
        f"webhookUrl is {len(long_url)} characters long; at most 2048 are accepted",
    )
    for _ in range(64):
        answer = await caller.call(
            "node-1", "POST", path, as_node="node-1", json={"webhookUrl": "http://127.0.0.1:1/"}
        )
        assert answer.status == 201
    answer = await caller.call(
        "node-1", "POST", path, as_node="node-1", json={"webhookUrl": "http://127.0.0.1:1/"}
    )
    assert answer.status == 409
    assert answer.detail.startswith("node-1 has 64 subscriptions, the most a node may hold")


# -- storage ---------------------------------------------------------------------------------


async def test_form_fields_are_bounded_in_count_and_size(caller: Caller) -> None:
    many = {f"f{i}": "v" for i in range(20)}
    answer = await caller.call(
        "node-1", "PUT", "/storage/local", as_node="node-1", body=FormSpec(many)
    )
    assert (answer.status, answer.detail) == (400, "the form has more than 16 parts")
    big = FormSpec({"tag": "t" * 5000})
    answer = await caller.call("node-1", "PUT", "/storage/local", as_node="node-1", body=big)
    assert answer.status == 413
    assert answer.detail == (
        "the form field 'tag' is larger than 4096 bytes, the most a text field takes"
    )


@pytest.mark.parametrize(
    ("path", "fields"),
    [("/storage/final", {}), ("/storage/local", {"tag": "t"})],
)
async def test_file_names_longer_than_255_bytes_are_refused(
    caller: Caller, path: str, fields: dict[str, str]
) -> None:
    spec = FormSpec(fields, filename="ü" * 128)  # 256 bytes as UTF-8
    answer = await caller.call("node-1", "PUT", path, as_node="node-1", body=spec)
    assert (answer.status, answer.detail) == (
        400,
        "the file name is 256 bytes long as UTF-8; at most 255 are accepted, use a shorter one",
    )
    spec = FormSpec(fields, filename="ü" * 127 + "x")  # 255 bytes
    assert (await caller.call("node-1", "PUT", path, as_node="node-1", body=spec)).status in (
        200,
        204,
    )


async def test_a_content_type_that_is_no_media_type_is_refused(caller: Caller) -> None:
    spec = FormSpec(content_type="no-slash")
    answer = await caller.call("node-1", "PUT", "/storage/local", as_node="node-1", body=spec)
    assert answer.status == 400
    assert answer.detail.startswith("the file part's content type 'no-slash' is not a media type")


async def test_a_noise_scale_that_is_not_finite_and_positive_is_refused(caller: Caller) -> None:
    for epsilon, sensitivity in (("1e-308", "1e308"), ("1e308", "1e-308")):
        spec = FormSpec({"epsilon": epsilon, "sensitivity": sensitivity}, file=b"1")
        answer = await caller.call(
            "node-1", "PUT", "/storage/final/localdp", as_node="node-1", body=spec
        )
        assert answer.status == 422, (epsilon, sensitivity)
        assert "is no usable noise scale" in answer.detail


async def test_a_second_file_part_is_refused(caller: Caller) -> None:
    spec = FormSpec({"tag": "t"})
    if caller.via == "memory":
        multipart = spec.multipart()
        request_body: Any = Multipart(
            (*multipart.parts, Part("other", (b"x",), filename="two.bin"))
        )
    else:
        form = spec.form_data()
        form.add_field("other", b"x", filename="two.bin")
        request_body = form
    answer = await _raw_call(caller, "PUT", "/storage/local", request_body)
    assert answer.status == 400
    assert answer.detail.startswith("the form has a second file part ('other')")


async def _raw_call(caller: Caller, method: str, path: str, body: Any) -> Answer:
    token = {"authorization": f"Bearer {caller.token('node-1')}"}
    if caller.via == "memory":
        request = Request(method, path, headers=token, body=body)
        async with caller.transports["node-1"].open(request) as answer:
            return Answer(answer.status, await answer.read())
    assert caller.http is not None
    url = caller.platform.node("node-1").gateway_url + path
    async with caller.http.request(method, url, data=body, headers=token) as response:
        return Answer(response.status, await response.read())


def raw_form(disposition: bytes, *, extra: bytes = b"") -> bytes:
    return (
        b"--b0\r\nContent-Disposition: "
        + disposition
        + b"\r\n"
        + extra
        + b"Content-Type: application/octet-stream\r\n\r\nhello\r\n--b0--\r\n"
    )


@pytest.mark.parametrize(
    "body",
    [
        raw_form(b'form-data; name="file"; filename="a\x01b.txt"'),
        raw_form(b'form-data; name="file"; filename="a\rb"'),
        raw_form(b'form-data; name="file"; filename="ok\x00"'),
        raw_form(
            b'form-data; name="file"; filename="x"', extra=b"X-Long: " + b"a" * 9000 + b"\r\n"
        ),
        b'--b0\r\nContent-Disposition: form-data; name="file"\r\n\r\nno end',
    ],
    ids=["control", "carriage-return", "nul", "long-header-line", "unterminated"],
)
async def test_a_form_aiohttp_cannot_parse_is_a_400_not_a_500(
    platform: LocalPlatform, http: aiohttp.ClientSession, body: bytes
) -> None:
    node = platform.node("node-1")
    for path in ("/storage/local", "/storage/final", "/storage/intermediate"):
        async with http.put(
            node.gateway_url + path,
            data=body,
            headers={
                "authorization": f"Bearer {node.env['KEYCLOAK_TOKEN']}",
                "content-type": "multipart/form-data; boundary=b0",
            },
        ) as response:
            assert response.status == 400, path
            assert (await response.json())["detail"].startswith("the multipart body is malformed")
    assert platform.final_results() == []


async def test_answers_build_urls_from_a_valid_host_only(
    start_platform: StartPlatform, stack: AsyncExitStack
) -> None:
    caller = await called(start_platform, stack, "memory")
    node = caller.platform.node("node-1")
    for host, expected in (("bad host/\x00", node.nginx_host), ("h.example:81", "h.example:81")):
        answer = await caller.call(
            "node-1",
            "PUT",
            "/storage/local",
            as_node="node-1",
            body=FormSpec(),
            headers={"host": host},
        )
        assert answer.status == 200
        assert answer.json()["url"].startswith(f"http://{expected}/local/")


# -- pod orchestrator ------------------------------------------------------------------------


def log(platform: LocalPlatform, **fields: Any) -> dict[str, Any]:
    return {
        "log": "x",
        "log_type": "info",
        "analysis_id": platform.analysis_id,
        "status": "executing",
        "progress": 1,
        **fields,
    }


async def test_a_progress_beyond_64_bits_gets_a_422_not_a_500(caller: Caller) -> None:
    body = orjson.dumps(log(caller.platform, progress=7)).replace(
        b'"progress":7', b'"progress":' + str(2**70).encode()
    )
    answer = await caller.call(
        "node-1",
        "POST",
        "/po/stream_logs",
        as_node="node-1",
        body=body,
        headers={"content-type": "application/json"},
    )
    assert answer.status == 422
    (error,) = answer.detail
    assert (error["loc"], error["input"]) == (["body", "progress"], "an integer of 71 bits")
    assert caller.platform.logs("node-1") == []


async def test_a_log_request_over_1_mib_is_refused(caller: Caller) -> None:
    answer = await caller.call(
        "node-1",
        "POST",
        "/po/stream_logs",
        as_node="node-1",
        json=log(caller.platform, log="x" * MiB),
    )
    assert answer.status == 413
    assert "a log request takes at most 1048576 bytes (1 MiB)" in answer.detail


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("x" * 100_000, "x" * 65536),
        ("line\n" * 5000, "\n".join(["line"] * 1000)),
    ],
    ids=["long", "many-lines"],
)
async def test_a_long_log_entry_is_cut_with_a_marker(caller: Caller, text: str, kept: str) -> None:
    answer = await caller.call(
        "node-1",
        "POST",
        "/po/stream_logs",
        as_node="node-1",
        json=log(caller.platform, log=text, progress=40),
    )
    assert answer.status == 200
    (record,) = caller.platform.logs("node-1")
    marker = TRUNCATED.format(chars=len(text), lines=text.count("\n") + 1)
    assert record.log == kept + marker
    assert (record.progress, caller.platform.progress("node-1")) == (40, 40)


async def test_the_po_keeps_at_most_16_mi_characters_of_logs_per_node(
    start_platform: StartPlatform, stack: AsyncExitStack
) -> None:
    caller = await called(start_platform, stack, "memory")
    platform = caller.platform
    for number in range(300):  # 300 entries of 64 Ki characters: more than 16 Mi in all
        entry = log(platform, log=f"{number:05d}" + "x" * (65536 - 5))
        answer = await caller.call(
            "node-1", "POST", "/po/stream_logs", as_node="node-1", json=entry
        )
        assert answer.status == 200
    kept = platform.logs("node-1")
    assert sum(len(r.log) for r in kept) <= 16 * MiB
    assert len(kept) == 256
    assert [r.log[:5] for r in kept] == [f"{n:05d}" for n in range(44, 300)]  # the newest


# -- data ------------------------------------------------------------------------------------


async def test_s3_never_lists_or_serves_links_out_of_the_folder(
    start_platform: StartPlatform, stack: AsyncExitStack, via: Via, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.csv"
    secret.write_text("not yours")
    s3 = tmp_path / "data" / "node-1" / "s3"
    s3.mkdir(parents=True)
    (s3 / "rows.csv").write_text("a\n")
    (s3 / "alias.csv").symlink_to(s3 / "rows.csv")  # inside: fine
    (s3 / "outside.csv").symlink_to(secret)
    (s3 / "folder").symlink_to(tmp_path)  # links to folders are not followed
    caller = await called(start_platform, stack, via, data_dir=tmp_path / "data")
    apikey = {"apikey": caller.platform.node("node-1").env["DATA_SOURCE_TOKEN"]}
    listing = await caller.call("node-1", "GET", "/kong/node-1-s3/s3", headers=apikey)
    assert listing.status == 200
    assert b"<Key>rows.csv</Key>" in listing.body and b"<Key>alias.csv</Key>" in listing.body
    assert b"outside" not in listing.body and b"folder" not in listing.body
    for key in ("outside.csv", "folder/secret.csv", "%00", "k" * 2000):
        answer = await caller.call("node-1", "GET", f"/kong/node-1-s3/s3/{key}", headers=apikey)
        assert answer.status == 404, key


async def test_a_fhir_file_linking_out_of_the_folder_stops_the_platform(tmp_path: Path) -> None:
    secret = tmp_path / "secret.json"
    secret.write_text('{"resourceType": "Patient", "id": "p1"}')
    fhir = tmp_path / "data" / "node-1" / "fhir"
    fhir.mkdir(parents=True)
    (fhir / "patients.json").symlink_to(secret)
    with pytest.raises(DataFolderError, match="outside the node's FHIR folder") as caught:
        async with LocalPlatform(2, data_dir=tmp_path / "data", state_dir=tmp_path / "state"):
            pass
    assert "patients.json" in str(caught.value)


async def test_a_fhir_search_takes_at_most_64_parameters(tmp_path: Path) -> None:
    fhir = tmp_path / "data" / "node-1" / "fhir"
    fhir.mkdir(parents=True)
    (fhir / "p.json").write_text('{"resourceType": "Patient", "id": "p1"}')
    async with (
        LocalPlatform(
            1, data_dir=tmp_path / "data", state_dir=tmp_path, transport="memory"
        ) as platform,
        AsyncExitStack() as stack,
    ):
        caller = await Caller.start(stack, platform, "memory")
        apikey = {"apikey": platform.node("node-1").env["DATA_SOURCE_TOKEN"]}
        query = "&".join(f"_id=p{i}" for i in range(65))
        answer = await caller.call(
            "node-1", "GET", "/kong/node-1-fhir/fhir/Patient", headers=apikey, query=query
        )
        assert answer.status == 400
        assert answer.json()["issue"][0]["code"] == "too-costly"


async def test_a_token_longer_than_4096_characters_is_refused(caller: Caller) -> None:
    answer = await caller.call("node-1", "GET", caller.broker("/participants"), token="x" * 5000)
    assert (answer.status, answer.detail) == (
        401,
        "invalid token: the token is longer than 4096 characters",
    )
    answer = await caller.call("node-1", "GET", "/storage/local/tags", token="y" * 5000)
    assert (answer.status, answer.detail) == (403, "JWT is malformed")
