"""What a pipeline stage needs besides its item: LLM roles, policy, metrics, provenance."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from iterrefine.config import PipelineConfig, SelectionConfig
from iterrefine.errors import IterrefineError
from iterrefine.item.model import Item, Provenance
from iterrefine.llm.chat import ChatClient, SimulatorAware
from iterrefine.observe.metrics import Metrics

if TYPE_CHECKING:
    from iterrefine.selection.barrier import DecisionTable
    from iterrefine.selection.selector import Selector


class Roles(Protocol):
    """LLM clients by role name (``LLMRoles`` in production, a plain dict in tests)."""

    def __getitem__(self, role: str, /) -> ChatClient: ...


@dataclass(frozen=True)
class PipelineContext:
    config: PipelineConfig
    #: ``strong`` (judge, refiner, aligner) and ``backbone`` (answers instructions).
    llm: Roles
    metrics: Metrics
    #: Prompt version, model per role, and whether the models are simulated.
    provenance: Provenance
    #: The paper's selection settings (``routing_policy = "cluster_quota"``).
    selection: SelectionConfig = SelectionConfig()  # noqa: RUF009  # frozen, immutable
    #: Gathers difficulty and cluster at scoring; ``None`` unless ``cluster_quota``.
    selector: Selector | None = None
    #: The run's exact selection decisions (``iterrefine run``); ``None``: online.
    decisions: DecisionTable | None = None
    #: The stage's own settings: the ``options`` table of its ``[[stages]]`` entry.
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def strong(self) -> ChatClient:
        return self.llm["strong"]

    @property
    def backbone(self) -> ChatClient:
        return self.llm["backbone"]

    def max_tokens(self, task: str) -> int:
        """The configured ``max_tokens`` of ``task`` (the paper's values by default)."""
        return self.config.max_tokens.of(task)

    def stamp(self, item: Item) -> Item:
        """Record which prompts, models, temperatures and preset touched the item (merged
        over its history: a role keeps its last model and temperature).

        Simulated when it was already, when the run was started on the simulator, or when
        any role's answers came from one (each response says so), however it was reached.
        """
        past, now = item.provenance, self.provenance
        return item.with_changes(
            provenance=Provenance(
                prompt_version=now.prompt_version,
                models={**past.models, **now.models},
                simulated=past.simulated or now.simulated or self.answered_by_simulator(),
                temperatures={**past.temperatures, **now.temperatures},
                preset=now.preset,
            )
        )

    def answered_by_simulator(self) -> bool:
        """Whether a role of this context has had an answer from iterrefine's simulator."""
        for role in self.provenance.models:
            try:
                client = self.llm[role]
            except (KeyError, IterrefineError):
                continue
            if isinstance(client, SimulatorAware) and client.answered_by_simulator:
                return True
        return False
