"""One error root for iterrefine.

Retry loops look at ``retriable`` instead of lists of exception types; the
runtime dead-letters a message whose handler raised a non-retriable error.

    IterrefineError (retriable=False)
    ├── ConfigError               bad or missing configuration; the message says the fix
    │   └── TopicSetupError       the cluster's topics are not what the pipeline needs
    ├── ValidationError           an input record is not a usable item (reason = short code)
    ├── BrokerError               the embedded broker cannot start / is not reachable
    ├── EmptyInput                the input holds no records (``run`` exits 5)
    ├── TransientError (retriable=True)
    │   ├── LLMTransientError     429 / 5xx / timeout / connection error from an LLM endpoint
    │   │   └── LLMRetriesExhausted  (retriable=False) the call used its attempt budget
    │   └── DeliveryError         the broker did not acknowledge a produced message
    ├── LLMError                  non-retriable LLM failure (401, 400, model not found, ...)
    ├── LLMUnavailable            a role's endpoint is down for good (e.g. its key is
    │   │                         rejected): the message is abandoned, never dead-lettered
    │   └── CostCapReached        the run's cost cap was reached: no new paid call starts
    ├── UnparseableOutput         the model's answer could not be read after all attempts
    │   └── TruncatedOutput       the answer was cut off at max_tokens, twice
    └── StageContractError        a handler wrote to an undeclared topic or returned no outputs
"""

from __future__ import annotations


class IterrefineError(Exception):
    """Base of every error raised on purpose by iterrefine."""

    retriable: bool = False
    #: Short machine-readable reason, used as the DLQ ``reason`` header and metric label.
    reason: str = "error"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class ConfigError(IterrefineError):
    """Configuration is missing or inconsistent; the message says how to fix it."""

    reason = "config"


class TopicSetupError(ConfigError):
    """A topic could not be created, or exists unlike the pipeline needs it (partitions,
    cleanup policy); the message names the topic, what was asked, what exists and the fix."""

    reason = "topic_setup"


class ValidationError(IterrefineError):
    """A record is not a valid item (not JSON, wrong shape, too large, bad UTF-8, ...)."""

    reason = "invalid_item"
    #: The record's own id when it has a valid one: its dead letter is filed under it.
    item_id: str | None = None


class BrokerError(IterrefineError):
    """The Kafka broker could not be started or reached."""

    reason = "broker"


class EmptyInput(IterrefineError):
    """The input holds no records: nothing to run (``iterrefine run`` exits 5, not 0)."""

    reason = "empty_input"


class TransientError(IterrefineError):
    """A failure that is expected to go away; retried with jittered backoff."""

    retriable = True
    reason = "transient"

    def __init__(
        self, message: str, *, reason: str | None = None, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message, reason=reason)
        #: Server-suggested wait (``Retry-After``), honoured by the backoff policy.
        self.retry_after_s = retry_after_s


class LLMTransientError(TransientError):
    """429, 5xx, timeout or connection error from an LLM endpoint."""

    reason = "llm_transient"


class DeliveryError(TransientError):
    """The broker did not acknowledge a produced record."""

    reason = "delivery"


class LLMError(IterrefineError):
    """A non-retriable LLM failure (authentication, bad request, unknown model)."""

    reason = "llm_error"


class LLMRetriesExhausted(LLMTransientError):
    """A call used its whole attempt budget on transient failures (429s, sporadic 5xx).

    Not retriable on purpose: the client is the one retry layer for LLM calls, so the
    runtime must not multiply its attempts by retrying the handler.
    """

    retriable = False
    reason = "llm_retries_exhausted"


class LLMUnavailable(IterrefineError):
    """A role's endpoint cannot serve anything (its circuit was given up, e.g. a bad key).

    Not the item's fault: the runtime leaves the message uncommitted for a later run
    or worker instead of dead-lettering it.
    """

    reason = "llm_unavailable"


class CostCapReached(LLMUnavailable):
    """The run spent its ``max_cost``: a call the cache cannot answer is not sent.

    Abandoned like :class:`LLMUnavailable`: the message stays uncommitted, and a rerun
    with a higher cap (answers already received come from the cache) finishes it.
    """

    reason = "cost_cap"


class UnparseableOutput(IterrefineError):
    """The model's answer could not be parsed, even after the configured re-asks."""

    reason = "unparseable_judge_output"

    def __init__(self, message: str, *, task: str, raw: str) -> None:
        super().__init__(message)
        self.task = task
        #: The last raw answer, kept (truncated) for the DLQ and logs.
        self.raw = raw[:2000]


class TruncatedOutput(UnparseableOutput):
    """The model's answer was cut off at ``max_tokens`` even after a re-ask with a higher
    limit. It is unreadable by policy: a half-written text must never pass as complete."""

    reason = "truncated_llm_output"


class StageContractError(IterrefineError):
    """A handler broke the stage contract: an undeclared output topic, or not a list of outputs.

    Not retriable (the same input makes the same mistake): the message is dead-lettered.
    """

    reason = "stage_contract"
