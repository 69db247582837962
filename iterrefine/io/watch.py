"""Follow the terminal topics until every expected item id has arrived."""

from __future__ import annotations

from collections.abc import Callable, Collection

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from iterrefine.config import KafkaConfig
from iterrefine.io.export import Selection, Terminal, outcome_of_topic, terminal_of
from iterrefine.kafka.clients import make_consumer, true_end_offsets
from iterrefine.kafka.idle import IdleRest
from iterrefine.kafka.topics import TopicNames


class TerminalWatcher:
    """Reads ``items.curated``/``rejected``/``dlq`` from where they ended at :meth:`start`.

    Start it *before* ingesting, so that everything this run produces is seen.
    Group-less: it never disturbs the pipeline's consumer groups.
    """

    def __init__(self, config: KafkaConfig, bootstrap_servers: str, *,
                 fetch_max_wait_ms: int = 100, idle_poll_max_ms: int = 2000) -> None:
        self._config = config
        self._bootstrap = bootstrap_servers
        # The last item is seen this much later at most (the stages' own setting, not
        # aiokafka's 500 ms: a run ends when this sees its last item).
        self._fetch_max_wait_ms = fetch_max_wait_ms
        self._names = TopicNames(config.topic_prefix)
        self._idle_poll_max_ms = idle_poll_max_ms
        self._consumer: AIOKafkaConsumer | None = None
        self._idle: IdleRest | None = None
        self.selection = Selection()

    async def start(self) -> None:
        consumer = make_consumer(self._config, self._bootstrap, group_id=None,
                                 fetch_max_wait_ms=self._fetch_max_wait_ms)
        await consumer.start()
        self._consumer = consumer
        partitions = [
            TopicPartition(topic, p)
            for topic in self._names.terminal()
            for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        ends = await true_end_offsets(consumer, partitions)
        for tp, offset in ends.items():
            consumer.seek(tp, offset)
        # Rests while nothing arrives; a stage of this process producing a terminal
        # record wakes it (the last item is still seen at once).
        self._idle = IdleRest(consumer, self._names.terminal(),
                              max_rest_s=self._idle_poll_max_ms / 1000)

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def poll(self, expected: Collection[str], timeout_ms: int = 200) -> int:
        """Read what arrived; return how many expected ids were seen for the first time."""
        return await self._read(
            lambda t: self.selection.offer(t) and t.id in expected, timeout_ms)

    async def _read(self, offer: Callable[[Terminal], bool], timeout_ms: int) -> int:
        """Hand every record that arrived to ``offer``; how many it took as new."""
        assert self._consumer is not None and self._idle is not None, "start() first"
        if self._idle.due:
            await self._idle.rest()
        batch = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=5000)
        self._idle.polled(sum(map(len, batch.values())))
        new = 0
        for tp, records in batch.items():
            outcome = outcome_of_topic(self._names, tp.topic)
            for record in records:
                if offer(terminal_of(record, outcome)):
                    new += 1
        return new

    async def follow(
        self,
        offer: Callable[[Terminal], bool],
        *,
        done: Callable[[], bool],
        on_progress: Callable[[int], None] | None = None,
        should_stop: Callable[[], bool] = lambda: False,
        timeout_ms: int = 100,
    ) -> None:
        """Hand arrivals to ``offer`` (e.g. a streaming export) until ``done`` or ``should_stop``.

        Unlike :meth:`wait_for`, nothing is kept here: the ``selection`` stays empty.
        """
        while not done() and not should_stop():
            new = await self._read(offer, timeout_ms)
            if new and on_progress is not None:
                on_progress(new)

    async def wait_for(
        self,
        expected: Collection[str],
        *,
        on_progress: Callable[[int], None] | None = None,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> int:
        """Poll until all ``expected`` ids arrived (or ``should_stop``); return the count seen."""
        seen = sum(1 for item_id in expected if item_id in self.selection.by_id)
        while seen < len(expected) and not should_stop():
            new = await self.poll(expected)
            if new:
                seen += new
                if on_progress is not None:
                    on_progress(new)
        return seen
