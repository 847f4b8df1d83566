"""Kafka transactions for the recommendation events, against the idempotent producer the worker uses.

What a transaction would add: a micro-batch's recommendation events and its
input offsets commit together, and a ``read_committed`` consumer never sees
the events of an aborted batch. What the worker has instead: the idempotent
producer (a retried send is written once), exactly-once *effects* from the
fences in Redis, and recommendation events that are at least once, which a
consumer deduplicates by ``version`` (README, "Running in production").

This measures the cost, side by side on one Apache Kafka broker (KRaft, one
node, started here from Maven Central like the tests'), one micro-batch at a
time, the two modes alternating batch by batch:

- idempotent: send every event of the batch, await every acknowledgement
  (`streams.app.KafkaPublisher`); its consumer reads uncommitted;
- transactional: begin, send every event, add the batch's input offsets
  (``send_offsets_to_transaction``), commit; its consumer reads committed.

For each it prints the publish time (the worker waits for it before its next
step) and the time until the batch's last event reached a consumer (what a
recommendation's freshness adds), medians and p99 over --batches batches.

    python bench/transactions.py
    python bench/transactions.py --batches 200 --batch 300 --size 1500
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition  # noqa: E402

from streams.apache_kafka import kafka_available, start_kafka  # noqa: E402
from streams.clients.kafka import ensure_topics  # noqa: E402

MODES = ("idempotent", "transactional")
NO_MARKER = b"-" * 16  # the end of every event but a batch's last


class LastEventWatch:
    """Reads a topic and resolves a future when a batch's last event (value ending in its marker) arrives."""

    def __init__(self, consumer: AIOKafkaConsumer) -> None:
        self.consumer = consumer
        self.waiting: dict[bytes, asyncio.Future] = {}

    def expect(self, marker: bytes) -> asyncio.Future:
        self.waiting[marker] = asyncio.get_running_loop().create_future()
        return self.waiting[marker]

    async def run(self) -> None:
        async for message in self.consumer:
            future = self.waiting.pop(message.value[-16:], None)
            if future is not None:
                future.set_result(time.perf_counter())


async def _publish_idempotent(producer: AIOKafkaProducer, topic: str, messages: list[tuple[bytes, bytes]],
                              offsets: dict, group: str) -> None:
    pending = [await producer.send(topic, value, key=key) for key, value in messages]
    await asyncio.gather(*pending)


async def _publish_transactional(producer: AIOKafkaProducer, topic: str, messages: list[tuple[bytes, bytes]],
                                 offsets: dict, group: str) -> None:
    await producer.begin_transaction()
    try:
        for key, value in messages:
            await producer.send(topic, value, key=key)
        await producer.send_offsets_to_transaction(offsets, group)
        await producer.commit_transaction()
    except BaseException:
        await producer.abort_transaction()
        raise


async def measure(broker: str, args: argparse.Namespace) -> dict[str, dict[str, list[float]]]:
    run = f"tx{os.getpid()}"
    topics = {mode: f"{run}-{mode}-recs" for mode in MODES}
    source = f"{run}-clicks"
    ensure_topics(broker, [*topics.values(), source], args.partitions)
    producers = {"idempotent": AIOKafkaProducer(bootstrap_servers=broker, enable_idempotence=True, linger_ms=5),
                 "transactional": AIOKafkaProducer(bootstrap_servers=broker, transactional_id=f"{run}-worker",
                                                   linger_ms=5)}
    watches = {mode: LastEventWatch(AIOKafkaConsumer(
        topics[mode], bootstrap_servers=broker, auto_offset_reset="latest", group_id=f"{run}-{mode}-reader",
        isolation_level="read_committed" if mode == "transactional" else "read_uncommitted")) for mode in MODES}
    publish = {"idempotent": _publish_idempotent, "transactional": _publish_transactional}
    for producer in producers.values():
        await producer.start()
    for watch in watches.values():
        await watch.consumer.start()
    readers = [asyncio.create_task(watch.run()) for watch in watches.values()]
    times: dict[str, dict[str, list[float]]] = {mode: {"publish": [], "visible": []} for mode in MODES}
    try:
        for watch in watches.values():  # each reader has its partitions before anything is timed
            while not watch.consumer.assignment():
                await asyncio.sleep(0.05)
            for partition in watch.consumer.assignment():
                await watch.consumer.seek_to_end(partition)
        filler = b"x" * max(0, args.size - 16)
        for number in range(args.warmup + args.batches):
            for mode in MODES if number % 2 else reversed(MODES):  # alternate which goes first
                marker = f"{mode[:1]}{number:015d}".encode()
                messages = [(f"user-{number}-{i}".encode(), filler + (marker if i == args.batch - 1 else NO_MARKER))
                            for i in range(args.batch)]
                offsets = {TopicPartition(source, number % args.partitions): number * args.batch}
                seen = watches[mode].expect(marker)
                started = time.perf_counter()
                await publish[mode](producers[mode], topics[mode], messages, offsets, f"{run}-worker-group")
                published = time.perf_counter()
                reached = await asyncio.wait_for(seen, timeout=30)
                if number >= args.warmup:
                    times[mode]["publish"].append(1000 * (published - started))
                    times[mode]["visible"].append(1000 * (reached - started))
    finally:
        for task in readers:
            task.cancel()
        for watch in watches.values():
            await watch.consumer.stop()
        for producer in producers.values():
            await producer.stop()
    return times


def _p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) > 1 else values[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--batches", type=int, default=200, help="measured micro-batches per mode")
    parser.add_argument("--warmup", type=int, default=10, help="micro-batches per mode before measuring")
    parser.add_argument("--batch", type=int, default=300, help="recommendation events per micro-batch")
    parser.add_argument("--size", type=int, default=1500, help="bytes per event (a list of 10 items with "
                                                               "interests is about 1.5 kB of JSON)")
    parser.add_argument("--partitions", type=int, default=4, help="partitions of each topic")
    args = parser.parse_args()
    why = kafka_available()
    if why:
        parser.error(why)
    with tempfile.TemporaryDirectory(prefix="iu-tx-") as tmp:
        broker = start_kafka(Path(tmp))
        try:
            times = asyncio.run(measure(f"127.0.0.1:{broker.port}", args))
        finally:
            broker.stop()
    print(f"{args.batches} micro-batches of {args.batch} events of {args.size} bytes per mode, alternating, "
          "Apache Kafka 4.4 (one node):")
    for mode in MODES:
        publish, visible = times[mode]["publish"], times[mode]["visible"]
        print(f"{mode:14s} publish p50 {statistics.median(publish):6.1f} ms p99 {_p99(publish):6.1f} ms   "
              f"visible to a consumer p50 {statistics.median(visible):6.1f} ms p99 {_p99(visible):6.1f} ms")
    ratio = statistics.median(times["transactional"]["publish"]) / statistics.median(times["idempotent"]["publish"])
    print(f"transactional / idempotent publish time (medians): {ratio:.2f}")


if __name__ == "__main__":
    main()
