"""The settings, as frozen msgspec structs: one per ``[table]`` of the config file.

Units are in the field names (``timeout_s``, ``linger_ms``); secrets are never stored,
only the *name* of the environment variable (or file) that holds them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import msgspec

from iterrefine.errors import ConfigError
from iterrefine.item.model import DEFAULT_MAX_ENVELOPE_BYTES, DEFAULT_MAX_RAW_BYTES

_DAY_MS = 24 * 3600 * 1000


class TopicRetention(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``retention.ms`` per topic class, set when iterrefine creates a topic (-1: forever).

    The topics are the system of record, so only work in progress expires:

    - ``raw`` (``items.raw``): what was ingested; ``replay`` re-reads it. Forever.
    - ``intermediate`` (``items.scored``, ``items.refine``, ``items.review``,
      ``items.align`` and user stages' topics): an item passes through in seconds to
      minutes; kept a week so that a stopped stage can resume and a ``replay --to STAGE``
      can re-run a recent range from there.
    - ``terminal`` (``items.curated``, ``items.rejected``, ``items.dlq``): the results;
      ``export`` reads them from the beginning. Forever.
    - ``model`` (``items.selection-model``): compacted (the newest version per key stays);
      forever, so that a worker started a month later still finds the model.
    """

    raw: int = -1
    intermediate: int = 7 * _DAY_MS
    terminal: int = -1
    model: int = -1


class KafkaConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    #: ``None`` starts the embedded broker.
    bootstrap_servers: str | None = None
    client_id: str = "iterrefine"
    topic_prefix: str = "iterrefine."
    partitions: int = 8
    #: Copies of each partition for the topics iterrefine creates. ``None``: min(3, brokers
    #: in the cluster), so a production cluster gets 3 and a one-broker one 1.
    replication_factor: int | None = None
    #: ``min.insync.replicas`` of the topics iterrefine creates: a write (``acks=all``) is
    #: acknowledged once this many copies have it. ``None``: 2 from replication 3 on (one
    #: broker may be down and no acknowledged write lives on one disk only), else 1.
    min_insync_replicas: int | None = None
    retention_ms: TopicRetention = TopicRetention()
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    #: Name of the environment variable holding the SASL password.
    sasl_password_env: str | None = None
    #: Path of a file holding the SASL password (e.g. a mounted Kubernetes secret).
    sasl_password_file: str | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    #: Static membership id for rolling restarts (``group.instance.id``).
    group_instance_id: str | None = None
    #: Wait before retrying a failed broker request (Kafka's ``retry.backoff.ms``).
    #: aiokafka also waits this long before a consumer's first read of the committed
    #: offsets of partitions it was given, so it delays every stage's first fetch.
    retry_backoff_ms: int = 100


class BrokerConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Storage of the embedded broker that ``iterrefine run`` starts for itself.

    Tansu's memory storage keeps every record until the broker stops, so it grows with
    the input; ``disk`` spills the records to a scratch SeaweedFS store under the data
    dir instead (flat memory, about 1.5 s more start-up, lower throughput), deleted when
    the run ends. See :mod:`iterrefine.app._run_broker`.
    """

    #: ``auto``: ``disk`` when the input is at least ``disk_above_mb``, else ``memory``.
    storage: Literal["auto", "memory", "disk"] = "auto"
    disk_above_mb: float = 1.0


class StaticPartitions(msgspec.Struct, frozen=True, kw_only=True,
                       forbid_unknown_fields=True):
    """Take partitions ``p`` with ``p % count == index`` by manual assignment, no group join.

    Set by ``iterrefine run`` only when it started the broker itself: nobody else can
    be in its consumer groups then, and a join costs seconds on the embedded broker
    (Tansu completes a JoinGroup after about half the session timeout). The group id is
    still used for offset commits.
    """

    index: int = 0
    count: int = 1


class RuntimeConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    #: Messages being processed at once per stage process (across its partitions).
    max_in_flight: int = 256
    fetch_max_records: int = 500
    #: Records started per turn of the event loop. A handler makes its LLM request in its
    #: first step, but the request leaves only when the loop next turns: a fetched batch
    #: of 200 started at once sent its first request once all 200 were made (~0.2 s of
    #: one core); started 16 at a time, requests leave as they are made.
    dispatch_batch: int = 16
    fetch_timeout_ms: int = 100
    #: How long the broker may hold an empty fetch. aiokafka's 500 ms default adds up to
    #: that much to every hop when a topic is quiet (measured ~0.2 s per hop on Tansu);
    #: each item crosses up to 10 hops, and latency here is end-to-end latency.
    fetch_max_wait_ms: int = 100
    commit_interval_ms: int = 1000
    #: A stage whose input stays empty (its items wait on an LLM) stops fetching and
    #: rests, doubling from 0.25 s up to this, until its topic gets a record; a record
    #: produced in the same process wakes it at once (:mod:`iterrefine.kafka.idle`), one
    #: from another process is seen after the rest. Measured with every stage waiting on
    #: a 30 s endpoint (benchmarks/idle_cpu.py): 43% of a core without resting, ~4% at
    #: 2 s, ~2.5% at 5 s, ~2% at 10 s. 0: never rest (fetch every ``fetch_max_wait_ms``).
    idle_poll_max_ms: int = 10_000
    #: SIGTERM: how long to let in-flight work finish before committing and exiting.
    drain_timeout_s: float = 30.0
    #: Rebalance: how long revoked partitions may finish their in-flight work.
    revoke_drain_timeout_s: float = 10.0
    #: SIGTERM of a ``worker``: how long its stages stay in their groups once all have
    #: committed. Workers stopped together (a rollout, ``docker compose down``) then all
    #: commit before any leaves: noida-db refuses a commit the moment another member has left,
    #: and the rejoin to commit again never completes there (docs/broker-notes.md).
    leave_delay_s: float = 2.0
    retry_max_attempts: int = 6
    retry_base_s: float = 0.2
    retry_max_s: float = 30.0
    max_item_bytes: int = DEFAULT_MAX_RAW_BYTES
    max_envelope_bytes: int = DEFAULT_MAX_ENVELOPE_BYTES
    max_poll_interval_ms: int = 300_000
    #: Tansu finishes a group join after about half the session timeout, and a dead
    #: member's partitions move after a full one: keep it short (Kafka's minimum is 6 s).
    session_timeout_ms: int = 6_000
    heartbeat_interval_ms: int = 1_000
    #: ``run`` gives up (exit 2, saying why) when its stages have no partitions by then.
    group_join_timeout_s: float = 60.0
    linger_ms: int = 5
    #: None: join the consumer groups (any cluster). See :class:`StaticPartitions`.
    static_partitions: StaticPartitions | None = None


StructuredOutput = Literal["json_schema", "json_object", "off", "auto"]
#: The dialects a request can be sent in (``auto`` resolves to one of them).
Dialect = Literal["json_schema", "json_object", "off"]


class LLMRoleConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    #: Both required for a real endpoint; a table without them (only prices, say) is
    #: settings for the role the simulator answers under ``--llm sim``.
    base_url: str = ""
    model: str = ""
    #: Name of the environment variable that holds the API key (never the key itself).
    api_key_env: str | None = None
    max_concurrency: int = 64
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    timeout_s: float = 60.0
    #: Attempts per call are ``max_retries + 1`` in total (the one retry layer).
    max_retries: int = 6
    #: Jittered exponential backoff between those attempts (Retry-After wins if longer).
    retry_base_s: float = 0.2
    retry_max_s: float = 30.0
    #: ``run``'s start-up probe: a server that takes connections but answers nothing
    #: within 5 s (a local single-slot server busy generating) is waited for this long.
    preflight_wait_s: float = 120.0
    #: Outage failures in a row (connection, timeout, 5xx) that open the role's circuit.
    circuit_failures: int = 5
    #: While the circuit is open: how often to ask the endpoint whether it is back.
    probe_interval_s: float = 5.0
    #: Structured output for the tasks that have a JSON schema, in the endpoint's dialect:
    #: ``json_schema`` (OpenAI, vLLM), ``json_object`` (llama.cpp: ``{"type": "json_object",
    #: "schema": ...}``), ``off`` (free text), or ``auto``: a probe request at the role's
    #: first structured call finds which of them the server enforces
    #: (:mod:`iterrefine.llm._dialect`). ``true``/``false`` of older configs mean
    #: ``json_schema``/``off``.
    structured_output: StructuredOutput = "auto"
    temperature: float = 0.0
    #: Sent as ``frequency_penalty`` (OpenAI's field; vLLM and llama.cpp take it too) on
    #: the tasks that do not copy item text (not refine or align), where it breaks the
    #: loops small models fall into. None: not sent.
    frequency_penalty: float | None = None
    #: A looping answer (a model repeating itself until ``max_tokens``,
    #: :mod:`iterrefine.llm.loops`) is recognised ``text``: in the text returned cut at
    #: the limit, which is then read without its repeats instead of asked again at twice
    #: the limit; ``stream``: also while it streams in, closing the request at the loop
    #: (and a JSON answer once its object closes), so the rest is never generated; or
    #: ``off``. ``stream`` needs a server that streams (not ``iterrefine sim-llm``).
    loop_guard: Literal["stream", "text", "off"] = "text"
    #: For calls that bring no limit of their own (probes, a user task without one); the
    #: pipeline's tasks use ``[pipeline.max_tokens]``.
    max_tokens: int = 1024
    #: Prices per million prompt / completion tokens, for the run summary's cost (and a
    #: trial's estimate for the whole input); unset = cost not shown.
    price_in_per_mtok: float | None = None
    price_out_per_mtok: float | None = None
    #: Send a request again when it has not answered in 3x the role's recent p95 latency
    #: (at least ``hedge_min_delay_s``); the first answer wins (iterrefine.llm._hedge).
    hedge: bool = True
    hedge_min_delay_s: float = 1.0
    #: What tells this endpoint apart in the response cache's key (docs/cache.md); unset:
    #: its ``base_url``. Give two URLs of one server the same value to share answers.
    endpoint_identity: str | None = None

    def api_key(self) -> str:
        """The key from the named environment variable; servers without auth get a dummy."""
        if self.api_key_env is None:
            return "not-needed"
        value = os.environ.get(self.api_key_env)
        if not value:
            raise ConfigError(
                f"environment variable {self.api_key_env} is not set; export it with the API key "
                "for this endpoint, or remove api_key_env for a server without authentication"
            )
        return value


class TaskTokenLimits(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``max_tokens`` per LLM task; the defaults are the paper's published settings.

    An answer cut off at its limit is asked again once with twice the limit, then
    treated as unreadable (see :mod:`iterrefine.tasks.ask`).
    """

    answer: int = 2000
    score: int = 2000
    evaluate: int = 2048
    refine: int = 4096
    review: int = 4096
    align: int = 4096

    def of(self, task: str) -> int:
        value = getattr(self, task, None)
        if not isinstance(value, int):
            raise KeyError(f"no token limit for task {task!r}")
        return value


class LLMDefaults(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Settings every LLM role takes unless its own table sets them."""

    temperature: float = 0.0


class CacheConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The LLM response cache (:mod:`iterrefine.llm.cache`)."""

    #: ``on`` (read and write), ``refresh`` (ask again, overwrite) or ``off``. The
    #: ``run`` and ``worker`` commands default to ``on``; a bare ``Config()`` has none.
    mode: Literal["on", "off", "refresh"] = "off"
    #: The SQLite file; default ``<data_dir>/llm-cache.sqlite3``.
    path: str | None = None


class PipelineConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    max_rounds: int = 3
    #: What happens to an item that never converged within ``max_rounds``: keep the
    #: original, drop it, or align its last readable revision anyway (the paper's choice;
    #: the item then says ``converged = false``).
    exhausted_policy: Literal["keep_original", "drop", "keep_last_revision"] = "keep_original"
    #: The refiner sees every earlier reviewer's explanation of a loss (the paper's
    #: "feedback set"), oldest first, bounded: the newest ``feedback_max_entries``
    #: explanations that fit in ``feedback_max_chars`` characters.
    feedback_max_entries: int = 5
    feedback_max_chars: int = 6000
    max_tokens: TaskTokenLimits = TaskTokenLimits()
    #: Lower a content task's limit to fit the item (never above ``max_tokens``):
    #: refine gets room for about three times the original instruction and input, align
    #: three times the original output (six in ``complete`` mode), plus 512 tokens, so a
    #: one-line answer is not given 4,096 tokens to loop in (:mod:`iterrefine.tasks.limits`).
    fit_max_tokens: bool = True
    #: Output alignment: ``anchored`` rewrites the original output for the revision and
    #: adds no new facts; ``complete`` makes the output fully answer the revision, adding
    #: what it asks for and keeping the original's facts where they still apply.
    alignment_mode: Literal["anchored", "complete"] = "anchored"
    #: Review in both orders; B converges only if it wins or ties in both.
    position_swap: bool = False
    #: Extra calls when a model answer cannot be parsed.
    parse_retries: int = 2
    #: Threshold routing: an item is high if the judge says high and its mean score ≥ this.
    high_min_mean_score: float = 7.0
    #: Score refined items again after alignment (one more strong call per refined item),
    #: so dashboards can show whether refinement lifted quality. Not in the paper: the
    #: ``paper`` preset turns it off.
    rescore_refined: bool = True
    #: The paper's task filter: the judge also says whether the item involves reasoning
    #: or inference, and an item that does not is rejected (reason ``not_reasoning``).
    task_filter: bool = False
    #: The task filter, when the judge's answer does not say whether the item involves
    #: reasoning: ``keep`` the item, or ``reject`` it (reason ``reasoning_unstated``), as
    #: the paper's code drops every answer it cannot read.
    task_filter_unstated: Literal["keep", "reject"] = "keep"
    #: How route splits high from low: ``threshold`` (above), ``cluster_quota`` (the
    #: paper's per-cluster top ``k_ratio`` by judge level and difficulty; see
    #: ``[selection]``), or ``module:attr`` of a factory ``(PipelineContext) ->
    #: RoutingPolicy`` (see docs/writing-a-stage.md).
    routing_policy: str = "threshold"


class SelectionConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The paper's selection (IQD stage 2): difficulty, diversity clusters, per-cluster quota.

    Used when ``pipeline.routing_policy = "cluster_quota"``; needs the ``embedding`` and
    ``difficulty`` LLM roles.
    """

    #: ``exact``: the paper's batch procedure over every stage-1 survivor (k-means over
    #: all vectors, then the quota), behind a barrier at route: needs a finite input, so
    #: only ``iterrefine run`` does it. ``online``: a shared centroid model trained as
    #: items stream, each cluster's quota ranked by its one owner. ``auto``: exact for
    #: ``run``, online for long-running ``worker`` processes.
    mode: Literal["auto", "exact", "online"] = "auto"
    #: Set by ``iterrefine run`` when it runs the exact selection (and handed to its
    #: ``--workers`` children): the id its signals and decisions carry. Leave it empty.
    exact_run_id: str = ""
    #: Number of k-means clusters (the paper: 132).
    k: int = 132
    #: Exact mode on a small input: k is lowered to ``n // min_cluster_items`` when the
    #: survivors are too few for ``k`` clusters of this mean size (docs/paper.md, "The
    #: selection as run"). 1 keeps the paper's k whenever k-means can (n ≥ k).
    min_cluster_items: int = 10
    #: Share of every cluster kept as high quality (the paper: 0.8).
    k_ratio: float = 0.8
    #: Online: vectors the model trainer collects before it fits the first centroid
    #: model; until then items are ranked in one pseudo-cluster (``cluster = None``).
    #: Small on purpose: the refits soon replace a rough first model, while every item
    #: of the warm-up is ranked without clusters (benchmarks/selection.py).
    warmup: int = 500
    #: The trainer refines the centroids with ``partial_fit`` on batches of this size
    #: and publishes each new version.
    batch_size: int = 512
    #: Difficulty metric: ``ifd`` (ppl of the output given the instruction ÷ ppl of the
    #: output alone: two calls) or ``instruction_ppl`` (what the paper's code ran).
    difficulty_metric: Literal["ifd", "instruction_ppl"] = "instruction_ppl"
    #: Recent (judge level, difficulty) keys each cluster ranks a new item against.
    rank_window: int = 2000
    #: How hard the quota holds each cluster's high share at ``k_ratio``: a deficit of
    #: this many highs overrules the rank completely. Smaller holds the share tighter and
    #: follows the paper's ranking less (benchmarks/selection.py measures both).
    quota_correction_items: int = 20
    #: Texts sent to the difficulty and embedding roles are cut to this many characters
    #: (the template part and, for IFD, the output each to half), so that a long item
    #: stays inside a small model's context (about 4 characters a token).
    max_prompt_chars: int = 8000
    #: Seed of k-means (the paper: ``random_state=0``).
    random_state: int = 0
    #: Online: the trainer refits the centroids on its ``refit_window`` most recent
    #: vectors after every ``refit_every`` vectors, so that topics arriving later get
    #: centroids of their own; a centroid that no longer matches any is retired and its
    #: cluster id never reused. 0 = never refit (``partial_fit`` only).
    refit_every: int = 2000
    refit_window: int = 4000
    #: How an item's vector is made from the token vectors the ``embedding`` role answers
    #: (llama.cpp's server with ``--pooling none``): ``mean`` over the tokens (the
    #: paper's pooling) or the ``last`` token's; a server that answers one vector has
    #: pooled it itself, and the item records ``server``. Then ``normalize``: ``none``
    #: (the paper's raw mean hidden state) or ``l2`` (unit length), applied here.
    pooling: Literal["mean", "last"] = "mean"
    normalize: Literal["none", "l2"] = "none"

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ConfigError(f"selection.k must be at least 1, got {self.k}")
        if not 0.0 < self.k_ratio <= 1.0:
            raise ConfigError(f"selection.k_ratio must be in (0, 1], got {self.k_ratio}")
        if self.warmup < self.k:
            raise ConfigError(
                f"selection.warmup ({self.warmup}) must be at least selection.k ({self.k}): "
                "k-means needs a vector per cluster to start"
            )
        if min(self.batch_size, self.rank_window, self.quota_correction_items,
               self.max_prompt_chars, self.min_cluster_items) < 1:
            raise ConfigError("selection.batch_size, rank_window, quota_correction_items, "
                              "max_prompt_chars and min_cluster_items must be at least 1")
        if self.refit_every < 0 or (self.refit_every and self.refit_window < self.k):
            raise ConfigError(
                f"selection.refit_every ({self.refit_every}) must be 0 (never) or positive, "
                f"with refit_window ({self.refit_window}) at least k ({self.k})")


class StageEntry(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A user stage in the graph: ``[[stages]]`` in the config file."""

    #: ``module:attr`` of a :class:`iterrefine.graph.spec.StageSpec`.
    spec: str
    #: Insert it before this stage: it reads that stage's input topic, and that stage
    #: then reads ``items.<name>`` (which the spec must declare as an output).
    before: str | None = None
    #: The stage's own settings, handed to its handler factory as ``ctx.options``.
    options: dict[str, Any] = {}


class Config(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    #: A named published setting applied under the file and flags
    #: (:mod:`iterrefine.config.presets`).
    preset: Literal["paper"] | None = None
    kafka: KafkaConfig = KafkaConfig()
    broker: BrokerConfig = BrokerConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    pipeline: PipelineConfig = PipelineConfig()
    selection: SelectionConfig = SelectionConfig()
    #: Roles: ``strong`` and ``backbone`` are required to run the LLM stages;
    #: ``embedding`` and ``difficulty`` for ``routing_policy = "cluster_quota"``.
    llm: dict[str, LLMRoleConfig] = {}
    llm_defaults: LLMDefaults = LLMDefaults()
    metrics_port: int | None = None
    #: Address the metrics endpoint binds: loopback by default (it has no authentication);
    #: ``0.0.0.0`` in a container, where Prometheus scrapes from another host.
    metrics_host: str = "127.0.0.1"
    data_dir: str = ".iterrefine"
    cache: CacheConfig = CacheConfig()
    #: ``iterrefine run`` (and :func:`iterrefine.curate`) stop new work once the run's LLM
    #: calls cost this much at the roles' prices (``price_in_per_mtok``/``_out_``): exit
    #: code 4. Calls in flight still finish. None: no cap.
    max_cost: float | None = None
    #: User stages, inserted into the built-in graph in this order.
    stages: tuple[StageEntry, ...] = ()
    #: Directories to import user stages and policies from (relative ones are taken
    #: relative to the config file, and stored absolute).
    import_paths: tuple[str, ...] = ()

    def cache_path(self) -> Path:
        return Path(self.cache.path or Path(self.data_dir) / "llm-cache.sqlite3")

    def role(self, name: str) -> LLMRoleConfig:
        try:
            return self.llm[name]
        except KeyError:
            raise ConfigError(
                f"no LLM configured for role {name!r}: pass --llm sim for the built-in "
                "simulator, or --llm-base-url/--strong-model/--backbone-model (or an [llm.{name}] "
                "table in the config file) for real endpoints"
            ) from None
