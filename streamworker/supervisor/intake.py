"""Intake: what ``consume`` returned, turned into what the dispatcher buffers.

In pool and static mode with acks not explicit, consecutive messages of one partition become one
``Run`` (read column by column, no per-record object); elsewhere, and for a stretch a run cannot
hold, each message becomes one wire record (``records.new_record``). Fetch errors are logged and
skipped here (partition EOF silently).
"""

from __future__ import annotations

import itertools
import operator
from typing import Any

from confluent_kafka import KafkaError, Message

from streamworker.records import new_record
from streamworker.supervisor.dispatch import Item, Run

# Unbound accessors of confluent-kafka's Message, for map() over a batch without a Python-level call.
# (Typed Any: the stubs make every field optional, which is only so for error messages.)
_message_partition: Any = Message.partition
_message_topic: Any = Message.topic
_message_error: Any = Message.error
_message_offset: Any = Message.offset
_message_key: Any = Message.key
_message_value: Any = Message.value
_message_headers: Any = Message.headers
_message_timestamp: Any = Message.timestamp
_second = operator.itemgetter(1)


class Intake:
    """Messages in, dispatcher items out. ``use_runs``: build runs where the mode allows them;
    ``only_topic``: the consumer is subscribed to that one topic by name (no message is asked)."""

    def __init__(self, use_runs: bool, only_topic: str | None, log: Any) -> None:
        self.use_runs = use_runs
        self.only_topic = only_topic
        self._log = log

    def items(self, messages: list[Message]) -> list[Item]:
        if not self.use_runs:
            return self.records(messages)
        items: list[Item] = []
        for part in split_into_runs(messages, self.only_topic):
            if isinstance(part, Run):
                items.append(part)
            else:
                items.extend(self.records(part))
        return items

    def records(self, messages: list[Message]) -> list[Item]:
        """One wire record per message (errors are logged and skipped)."""
        records: list[Item] = []
        append = records.append
        for message in messages:
            error = message.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    self._log.warning("fetch error", error=error.str(), topic=message.topic())
                continue
            ts_type, ts = message.timestamp()
            append(
                new_record(
                    message.topic(),  # type: ignore[arg-type]  # set on every message that is not an error
                    message.partition(),  # type: ignore[arg-type]
                    message.offset(),  # type: ignore[arg-type]
                    message.key(),
                    message.value(),
                    message.headers(),
                    ts if ts_type else None,
                )
            )
        return records


def split_into_runs(messages: list[Message], only_topic: str | None) -> list[Run | list[Message]]:
    """Consecutive messages of one partition as ``Run`` s, read column by column.

    A stretch that cannot be a run comes back as its messages: one with an error among them (e.g.
    partition EOF), or one that mixes two topics' partitions of the same number. ``only_topic``:
    the consumer is subscribed to that one topic by name, so no message needs to be asked.
    """
    parts: list[Run | list[Message]] = []
    for batch in _partition_stretches(messages):
        topic = only_topic
        if topic is None:
            topics = set(map(_message_topic, batch))
            topic = topics.pop() if len(topics) == 1 else None
        if topic is None or any(map(_message_error, batch)):
            parts.append(batch)
            continue
        parts.append(
            Run(
                topic,
                batch[0].partition() or 0,
                list(map(_message_offset, batch)),
                list(map(_message_key, batch)),
                list(map(_message_value, batch)),
                list(map(_message_headers, batch)),
                # (type, ms) -> ms: librdkafka gives -1 when there is no timestamp.
                list(map(_second, map(_message_timestamp, batch))),
            )
        )
    return parts


def _partition_stretches(messages: list[Message]) -> list[list[Message]]:
    """``messages`` cut where the partition number changes.

    librdkafka queues a fetch's messages partition by partition, so a ``consume()`` batch is mostly
    one partition's stretch: that case costs one pass in C and no copy (issue #16).
    """
    partitions = list(map(_message_partition, messages))
    if not partitions or partitions.count(partitions[0]) == len(partitions):
        return [messages] if messages else []
    stretches = []
    start = 0
    for _, group in itertools.groupby(partitions):
        end = start + len(list(group))
        stretches.append(messages[start:end])
        start = end
    return stretches
