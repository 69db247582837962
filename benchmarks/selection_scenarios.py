"""The data ``benchmarks/selection.py`` selects from: vectors, judge levels, difficulties.

Each scenario is a finite stream in arrival order. Simulated ones plant ``planted``
topic centres (the simulator's own embedding, or seeded centres) and draw the judge
level and the difficulty either independently of the topic (``today``: what the
simulator does) or per topic (every other: a topic has its own share of judge-high
items and its own difficulty level, which is where per-cluster quotas and a global one
part ways). ``real`` embeds real Dolly texts with wordllama (static 256-d embeddings
whose weights ship in the PyPI wheel: loaded from the wheel, never downloaded).
"""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from iterrefine.selection import alpaca_prompt, perplexity
from iterrefine.sim import SimConfig
from iterrefine.sim._vectors import echo_logprobs, embedding, planted_cluster
from iterrefine.sim.answers import unit

ROOT = Path(__file__).resolve().parent.parent
DOLLY = [ROOT / "examples" / "dolly_sample.jsonl",
         ROOT.parent / "shared" / "data" / "dolly_sample.jsonl"]
_VOCABULARY = [f"w{n}" for n in range(400)]


@dataclass
class Scenario:
    name: str
    vectors: NDArray[np.float32]
    levels: list[int]
    difficulties: list[float]
    #: Planted topic per item (None for real data).
    truth: list[int] | None
    about: str


def _texts(n: int) -> list[str]:
    rng = np.random.default_rng(7)
    return [f"Task {i}: " + " ".join(rng.choice(_VOCABULARY, size=int(rng.integers(6, 30))))
            for i in range(n)]


def _sim_difficulty(text: str) -> float:
    values = echo_logprobs(alpaca_prompt(text, ""))["token_logprobs"][:-1]
    return perplexity(values)


def today(n: int, planted: int, dim: int, noise: float) -> Scenario:
    """The simulator as it is: level and difficulty do not depend on the topic."""
    sim = SimConfig(embedding_clusters=planted, embedding_dim=dim, embedding_noise=noise)
    texts = _texts(n)
    prompts = [alpaca_prompt(t, "") for t in texts]
    vectors = np.stack([embedding(p, sim) for p in prompts]).astype(np.float32)
    return Scenario(
        "today", vectors, [2 if unit("level", t) < 0.6 else 1 for t in texts],
        [_sim_difficulty(t) for t in texts], [planted_cluster(p, sim) for p in prompts],
        "the simulator's planted clusters; level (60% high) and difficulty by text hash")


def _centres(planted: int, dim: int, seed: int) -> NDArray[np.float64]:
    centres = np.random.default_rng(seed).normal(size=(planted, dim))
    normed: NDArray[np.float64] = centres / np.linalg.norm(centres, axis=1, keepdims=True)
    return normed


def _topic_signals(topics: NDArray[np.int_], planted: int, seed: int) -> tuple[list[int],
                                                                            list[float]]:
    """Per topic: its share of judge-high items and its difficulty level."""
    rng = np.random.default_rng(seed + 1)
    high_share = rng.uniform(0.05, 0.95, size=planted)
    level_shift = rng.normal(0.0, 1.0, size=planted)
    levels = [2 if rng.random() < high_share[t] else 1 for t in topics]
    difficulties = (np.exp(2.0 + 0.5 * level_shift[topics]
                           + 0.3 * rng.normal(size=len(topics)))).tolist()
    return levels, difficulties


def planted_topics(name: str, n: int, planted: int, dim: int, noise: float, *,
                   zipf: float = 0.0, blocks: int = 0, seed: int = 11) -> Scenario:
    """Topics with their own level/difficulty; Zipf sizes; or arriving in blocks."""
    rng = np.random.default_rng(seed)
    if zipf:
        weights = 1.0 / np.arange(1, planted + 1) ** zipf
        topics = rng.choice(planted, size=n, p=weights / weights.sum())
    else:
        topics = rng.integers(0, planted, size=n)
    if blocks:
        # Topic t arrives in block t * blocks // planted: the stream sees a few topics
        # at a time, the later ones never during the warm-up.
        order = np.argsort(topics * blocks // planted * n + rng.permutation(n), kind="stable")
        topics = topics[order]
    noise_vectors = rng.normal(size=(n, dim))
    noise_vectors *= noise / np.linalg.norm(noise_vectors, axis=1, keepdims=True)
    vectors = (_centres(planted, dim, seed)[topics] + noise_vectors).astype(np.float32)
    levels, difficulties = _topic_signals(topics, planted, seed)
    about = (f"{planted} seeded topics, noise {noise}; each topic its own judge-high share "
             "(U[0.05, 0.95]) and difficulty level")
    if zipf:
        about += f"; Zipf({zipf}) topic sizes"
    if blocks:
        about += f"; topics arrive in {blocks} blocks"
    return Scenario(name, vectors, levels, difficulties, topics.tolist(), about)


def _wordllama() -> Any:  # wordllama ships no type hints
    """wordllama's model from the files inside its wheel, offline (it would download them
    otherwise: its loader looks for the tokenizer under another folder name)."""
    import wordllama
    from wordllama import WordLlama

    package = Path(wordllama.__file__).parent
    cache = Path(tempfile.mkdtemp(prefix="wordllama-"))
    for folder in ("weights", "tokenizers"):
        (cache / folder).mkdir()
        for path in (package / folder).iterdir():
            (cache / folder / path.name).symlink_to(path)
    return WordLlama.load(cache_dir=cache, disable_download=True)


def dolly_texts() -> list[str]:
    """The Dolly items (Alpaca template, no output), then every sentence of their
    contexts and responses as an item of its own: real text, ~1,100 items."""
    rows = []
    for path in DOLLY:
        if path.exists():
            rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    seen: set[str] = set()
    texts = []
    for row in rows:
        prompt = alpaca_prompt(row["instruction"], row.get("input", ""))
        for text in [prompt, *re.split(r"(?<=[.!?])\s+", f"{row['input']} {row['output']}")]:
            text = text.strip()
            if len(text) > 20 and text not in seen:
                seen.add(text)
                texts.append(text)
    return texts


def real(seed: int = 5) -> Scenario:
    """Real embeddings of real Dolly texts; the level follows a real property of the
    text (judge-high when it holds a number or a proper name after its first word:
    factual sentences), the difficulty is the simulator's (random by text)."""
    texts = dolly_texts()
    model = _wordllama()
    vectors = np.asarray(model.embed(texts, norm=False), dtype=np.float32)
    levels = [2 if re.search(r"\d|\s[A-Z][a-z]", text) else 1 for text in texts]
    order = np.random.default_rng(seed).permutation(len(texts))
    return Scenario(
        "real", vectors[order], [levels[i] for i in order],
        [_sim_difficulty(texts[i]) for i in order], None,
        f"wordllama (256-d, from its wheel) on {len(texts)} Dolly texts (the 120 items and "
        "the sentences of their contexts and responses); level 2 = the text states a number "
        "or a name; difficulty by text hash")
