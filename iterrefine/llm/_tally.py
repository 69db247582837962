"""What one LLM role's requests cost and how they went, counted in one place.

Each count feeds two readers: the run summary (:class:`LLMStats`, via
:meth:`LLMClient.stats`) and the role's Prometheus series
(``iterrefine_llm_requests_total``, ``_seconds``, ``_tokens_total``, and the answer
counters the ask layer reports through :meth:`LLMClient.record_answer`).
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from iterrefine.llm._wire import LLMStats
from iterrefine.llm.cache import RoleCache
from iterrefine.llm.latency import Reservoir
from iterrefine.observe.logging import UNIT_OF_WORK
from iterrefine.observe.metrics import Metrics


class Tally:
    """The counters of one role's client; the Prometheus ones only with ``metrics``."""

    def __init__(self, role: str, metrics: Metrics | None) -> None:
        self._role = role
        self._metrics = metrics
        #: HTTP requests sent (retries included) and those that failed.
        self.requests = 0
        self.errors = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self._latencies = Reservoir()
        #: Requests and tokens per item id (the unit of work they were made for), once
        #: :meth:`keep_per_item` is called: a trial's estimate needs each item's cost.
        #: Calls made outside any item (probes) are under "".
        self.by_item: dict[str, list[int]] | None = None
        # Children looked up once: labels() costs a lock and a tuple per call.
        self._status_counters: dict[str, Counter] = {}
        self._seconds: Histogram | None = None
        self._token_counters: tuple[Counter, Counter] | None = None
        if metrics is not None:
            self._seconds = metrics.llm_seconds.labels(role=role)
            self._token_counters = (
                metrics.llm_tokens_total.labels(role=role, kind="prompt"),
                metrics.llm_tokens_total.labels(role=role, kind="completion"),
            )

    def keep_per_item(self) -> None:
        if self.by_item is None:
            self.by_item = {}

    def _item_row(self, by_item: dict[str, list[int]]) -> list[int]:
        unit = UNIT_OF_WORK.get()
        key = str(unit.get("item_id", "")) if unit else ""
        row = by_item.get(key)
        if row is None:
            row = by_item[key] = [0, 0, 0]
        return row

    def observe(self, status: str, seconds: float) -> None:
        """A request ended with metric ``status`` (``ok``, ``429``, ``timeout``, ...)."""
        self._latencies.add(seconds)
        if self.by_item is not None:
            self._item_row(self.by_item)[0] += 1
        if self._seconds is None or self._metrics is None:
            return
        counter = self._status_counters.get(status)
        if counter is None:
            counter = self._metrics.llm_requests_total.labels(role=self._role, status=status)
            self._status_counters[status] = counter
        counter.inc()
        self._seconds.observe(seconds)

    def tokens(self, prompt: int, completion: int) -> None:
        """An answer's usage, as the server reported it."""
        self.prompt_tokens += prompt
        self.completion_tokens += completion
        if self.by_item is not None:
            row = self._item_row(self.by_item)
            row[1] += prompt
            row[2] += completion
        if self._token_counters is not None:
            prompt_counter, completion_counter = self._token_counters
            prompt_counter.inc(prompt)
            completion_counter.inc(completion)

    def answer(self, task: str, outcome: str, *, truncated: int, looped: int = 0) -> None:
        """How an answer of ``task`` read (``looped``: replies cut short at a loop)."""
        if self._metrics is None:
            return
        self._metrics.llm_answers_total.labels(task=task, outcome=outcome).inc()
        if truncated:
            self._metrics.llm_truncated_total.labels(role=self._role, task=task).inc(truncated)
        if looped:
            self._metrics.llm_looped_total.labels(role=self._role, task=task).inc(looped)

    def stats(
        self, *, retries: int, probes: int, circuit_opened: int, cache: RoleCache | None,
    ) -> LLMStats:
        return LLMStats(
            requests=self.requests,
            errors=self.errors,
            retries=retries,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            latency_sum_s=self._latencies.total,
            latency_samples_s=self._latencies.sample(),
            cache_hits=0 if cache is None else cache.hits,
            cache_misses=0 if cache is None else cache.misses,
            cache_tokens_saved=0 if cache is None else cache.tokens_saved,
            cache_rejected=0 if cache is None else cache.rejected,
            probes=probes,
            circuit_opened=circuit_opened,
        )
