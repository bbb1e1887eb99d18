"""A handler written for Nuclio's Python runtime runs unmodified, in-process through the harness.

nuclio-sdk is a dev dependency, so it is imported outright: a missing package fails this module
instead of skipping the proof. ``integration/test_nuclio_compat.py`` runs the same kind of handler
through a real broker.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import nuclio_sdk
import pytest
import yaml

from streamworker.testing import HandlerHarness
from streamworker.worker.sdk import QualifiedOffset, is_no_ack

# Written the way Nuclio's docs write handlers: annotated with nuclio_sdk types, state in
# context.user_data from init_context, logging with info_with, replying with nuclio_sdk.Response or a
# plain string, and acking explicitly with nuclio_sdk.QualifiedOffset.
NUCLIO_HANDLER = """
import os

import nuclio_sdk


def init_context(context: nuclio_sdk.Context) -> None:
    context.user_data.prefix = os.environ["PREFIX"]
    context.user_data.handled = 0
    context.logger.info_with("init_context done", prefix=context.user_data.prefix)

    def on_termination():
        context.logger.info_with("terminating", handled=context.user_data.handled)

    context.platform.set_termination_callback(on_termination)


def handler(context: nuclio_sdk.Context, event: nuclio_sdk.Event):
    context.user_data.handled += 1
    body = event.body.decode()
    context.logger.info_with(
        "Invoked",
        path=event.path,
        shard=event.shard_id,
        offset=event.offset,
        trigger_kind=event.trigger.kind,
        content_type=event.content_type,
        source=event.get_header("X-Source"),
    )
    if body == "string":
        return "plain string reply"
    if body == "hold":
        response = nuclio_sdk.Response(body="later", headers={}, content_type="text/plain", status_code=200)
        response.ensure_no_ack()
        return response
    return nuclio_sdk.Response(
        body=f"{context.user_data.prefix}:{body}",
        headers={"x-handled": str(context.user_data.handled)},
        content_type="text/plain",
        status_code=200,
    )


async def async_handler(context: nuclio_sdk.Context, event: nuclio_sdk.Event):
    await context.platform.explicit_ack(nuclio_sdk.QualifiedOffset.from_event(event))
    context.logger.info_with("acked", offset=event.offset)
    return f"{context.user_data.prefix}:acked"
"""


def write_function(folder: Path, handler: str) -> Path:
    folder.mkdir()
    (folder / "main.py").write_text(textwrap.dedent(NUCLIO_HANDLER), encoding="utf-8")
    config = {
        "metadata": {"name": "nuclio-compat"},
        "spec": {
            "handler": handler,
            "runtime": "python",
            "env": [{"name": "PREFIX", "value": "seen"}],
            "triggers": {
                "stream": {
                    "kind": "kafka-cluster",
                    "explicitAckMode": "enable",
                    "attributes": {"brokers": "127.0.0.1:9092", "topics": ["events"], "consumerGroup": "g"},
                }
            },
        },
    }
    path = folder / "function.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[HandlerHarness]:
    with HandlerHarness(write_function(tmp_path / "fn", "main:handler")) as loaded:
        yield loaded


def test_init_context_user_data_and_response(harness: HandlerHarness) -> None:
    reply = harness.call(b"order-1", headers={"X-Source": "web", "content-type": "text/plain"})
    assert isinstance(reply, nuclio_sdk.Response)
    assert (reply.body, reply.status_code, reply.content_type) == ("seen:order-1", 200, "text/plain")
    assert reply.headers == {"x-handled": "1"}
    assert not is_no_ack(reply)


def test_plain_string_reply(harness: HandlerHarness) -> None:
    assert harness.call(b"string") == "plain string reply"


def test_info_with_becomes_structured_log_records(harness: HandlerHarness) -> None:
    harness.call(b"order-1", partition=4, offset=17, headers={"x-source": "web"})
    init, invoked = harness.logs
    assert (init.level, init.message, init.fields["prefix"]) == ("info", "init_context done", "seen")
    assert invoked.level == "info" and invoked.message == "Invoked"
    assert {key: invoked.fields[key] for key in ("path", "shard", "offset", "trigger_kind", "source")} == {
        "path": "events",
        "shard": 4,
        "offset": 17,
        "trigger_kind": "kafka-cluster",
        "source": b"web",
    }
    # The worker's own fields come along, as in its JSON lines.
    assert (invoked.fields["topic"], invoked.fields["partition"]) == ("events", 4)


def test_ensure_no_ack_is_recognised_as_no_ack(harness: HandlerHarness) -> None:
    reply = harness.call(b"hold")
    assert isinstance(reply, nuclio_sdk.Response)
    # nuclio-sdk sets the header to the boolean True; streamworker must read that as "do not commit".
    assert reply.headers == {"x-nuclio-stream-no-ack": True}
    assert is_no_ack(reply)


def test_ensure_no_ack_on_a_bare_response() -> None:
    response = nuclio_sdk.Response()
    assert not is_no_ack(response)
    response.ensure_no_ack()
    assert is_no_ack(response)


def test_termination_callback(harness: HandlerHarness) -> None:
    harness.call(b"a")
    harness.call(b"b")
    assert harness.terminate() is True
    assert harness.logs[-1].message == "terminating"
    assert harness.logs[-1].fields["handled"] == 2


def test_async_handler_with_nuclio_qualified_offset(tmp_path: Path) -> None:
    with HandlerHarness(write_function(tmp_path / "fn", "main:async_handler")) as harness:
        assert harness.loaded.is_async
        assert harness.call(b"x", partition=2, offset=5) == "seen:acked"
        assert harness.acks == [QualifiedOffset("events", 2, 5)]
