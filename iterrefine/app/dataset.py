"""The curated data as a Hugging Face dataset folder, with a card that says how it was made.

:func:`save_dataset` writes ``Dataset.save_to_disk(folder)`` of the curated rows
(``id``, ``instruction``, ``input``, ``output``, ``status``, and the item's whole
lineage as a JSON string) and ``folder/README.md``, the dataset card
:func:`dataset_card` builds from the run's summary and the rows' provenance: how many
items were kept, refined, rejected or dead-lettered, the models and prompt version
that made them, the preset, and whether a simulator answered (then the card says so
first: such data is a test artefact, not training data). Pushing it to the Hub is
``load_from_disk(folder).push_to_hub(repo)`` plus the card (docs/python-api.md); that
needs the network, this does not. Needs the ``hf`` extra (``datasets``).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from iterrefine.errors import ConfigError

_COLUMNS = ("id", "instruction", "input", "output", "status")


def dataset_card(summary: Mapping[str, Any], rows: Iterable[Mapping[str, Any]]) -> str:
    """A dataset card (README.md with YAML metadata) for the curated ``rows`` of a run."""
    models: Counter[str] = Counter()
    prompts: Counter[str] = Counter()
    simulated = bool(summary.get("simulated"))
    count = 0
    for row in rows:
        count += 1
        provenance = (row.get("item") or {}).get("provenance") or {}
        models.update(f"{role}: {model}" for role, model in (provenance.get("models") or {})
                      .items())
        if provenance.get("prompt_version"):
            prompts[str(provenance["prompt_version"])] += 1
        simulated = simulated or bool(provenance.get("simulated"))
    outcomes = summary.get("outcomes") or {}
    refined = int(outcomes.get("refined", 0)) + int(outcomes.get("refined_unconverged", 0))
    kept = int(outcomes.get("high", 0)) + int(outcomes.get("unrefined", 0))
    preset = (summary.get("preset") or {}).get("name") or "none (defaults and your settings)"
    quality = (summary.get("quality") or {}).get("refined") or {}
    tags = ["iterrefine", "instruction-tuning"] + (["simulated"] if simulated else [])
    lines = [
        "---",
        "tags:", *[f"- {tag}" for tag in tags],
        "task_categories:", "- text-generation",
        "---", "",
        "# Curated instruction data", "",
    ]
    if simulated:
        lines += ["**SIMULATED: every judgement and rewrite here came from iterrefine's LLM "
                  "simulator, not a model. This is a test artefact, not training data.**", ""]
    lines += [
        "Curated with iterrefine, an implementation of Hu et al., *From Selection to "
        "Refinement: Iterative Optimization for Instruction Data* (ACL 2026): an LLM judge "
        "scored every item, high-quality items were kept as they were, and low-quality ones "
        "were refined (evaluate, refine, review) and their outputs aligned.", "",
        "| | items |", "| --- | --- |",
        f"| input records | {summary.get('items_in', '?')} |",
        f"| in this dataset (curated) | {count} |",
        f"| kept as they were | {kept} |",
        f"| refined | {refined} |",
        f"| rejected (judged unusable) | {summary.get('rejected', '?')} |",
        f"| dead-lettered | {summary.get('dlq', '?')} |", "",
        f"- Models: {', '.join(sorted(models)) or 'not recorded'}",
        f"- Prompt version: {', '.join(sorted(prompts)) or 'not recorded'}",
        f"- Preset: {preset}",
        f"- Simulated: {'yes' if simulated else 'no'}",
    ]
    if quality.get("count"):
        lines.append(f"- Judge score of the refined items, same items before → after: "
                     f"{quality['before_mean']} → {quality['after_mean']}")
    if summary.get("stopped_by_cost_cap") or summary.get("complete") is False:
        lines.append("- Incomplete: the run stopped before every item was curated "
                     "(cost cap or interruption)")
    lines += ["", "Columns: `id`, `instruction`, `input`, `output`, `status` (`high`: kept, "
              "`refined`, `unrefined`: kept after refinement failed), `lineage` (JSON: "
              "scores, every round's revision and verdict, provenance).", ""]
    return "\n".join(lines)


def require_datasets() -> None:
    """Fail before a run that is to write a dataset folder if ``datasets`` is missing."""
    try:
        import datasets  # noqa: F401
    except ImportError:
        raise ConfigError("writing a dataset folder needs the hf extra: "
                          "pip install 'iterrefine[hf]'") from None


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSON lines export."""
    if not path.exists():
        return []
    with path.open("rb") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def save_dataset(summary: Mapping[str, Any], rows: Sequence[Mapping[str, Any]],
                 folder: str | Path) -> Path:
    """``save_to_disk`` of the curated ``rows`` in ``folder``, with its card as README.md."""
    require_datasets()
    import datasets

    folder = Path(folder)
    table = {name: [str(row.get(name, "")) for row in rows] for name in _COLUMNS}
    table["lineage"] = [json.dumps(row.get("item"), ensure_ascii=False) for row in rows]
    datasets.Dataset.from_dict(table).save_to_disk(str(folder))
    (folder / "README.md").write_text(dataset_card(summary, rows), encoding="utf-8")
    return folder
