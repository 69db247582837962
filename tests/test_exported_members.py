"""The public surface: iterrefine's __all__ is sorted, complete and importable."""

from __future__ import annotations

import subprocess
import sys

import pytest

import iterrefine

EXPECTED = [
    "PIPELINE", "AnswerContext", "ChatClient", "Config", "ConfigError", "Curation", "Handler",
    "InlineHandler", "Item", "IterrefineError", "Output", "PipelineContext", "ReviewSample",
    "RoutingPolicy", "RunOptions", "RunResult", "StageContractError", "StageGraph",
    "StageSpec", "TaskSpec", "TransientError", "UnparseableOutput", "ValidationError",
    "__version__", "acurate", "ask", "ask_aligned", "ask_answer", "ask_evaluation",
    "ask_revision", "ask_score", "ask_verdict", "curate", "dataset_card", "load_config",
    "load_graph", "register_simulated_answer", "register_task", "run_pipeline",
    "save_dataset", "serve_pipeline",
]


def _isort_key(name: str) -> tuple[int, str]:
    """ruff's RUF022 order: CONSTANTS, then Classes, then everything else, each A–Z."""
    kind = 0 if name.isupper() else 1 if name[:1].isupper() else 2
    return kind, name


@pytest.mark.unit
def test_all_is_pinned_and_sorted() -> None:
    """__all__ lists exactly the public names, sorted as ruff sorts (changes are deliberate)."""
    assert iterrefine.__all__ == EXPECTED
    assert iterrefine.__all__ == sorted(iterrefine.__all__, key=_isort_key)


@pytest.mark.unit
def test_every_public_name_resolves_to_its_defining_object() -> None:
    """Each name loads, and is the object its module defines (not a copy)."""
    from iterrefine.graph.spec import StageSpec
    from iterrefine.runtime.stage import Output

    for name in iterrefine.__all__:
        assert getattr(iterrefine, name) is not None, name
    assert iterrefine.StageSpec is StageSpec and iterrefine.Output is Output
    assert iterrefine.__version__ == "0.1.0"


def test_importing_the_package_loads_no_kafka_client() -> None:
    """`import iterrefine` stays light: the public names load on first use."""
    probe = "import sys, iterrefine; print('aiokafka' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "False"
