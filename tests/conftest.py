"""Shared fixtures. Kafka tests run against the real embedded broker, never a fake."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from iterrefine.broker.embedded import EmbeddedBroker
from iterrefine.sim import SimConfig, SimServer

from .pipeline_support import FAST_SIM


@pytest.fixture(scope="session")
def broker() -> Iterator[str]:
    """Bootstrap servers of a private in-memory Tansu broker, shared by the whole session."""
    with EmbeddedBroker() as embedded:
        yield embedded.bootstrap_servers


@pytest.fixture
def sim_config() -> SimConfig:
    """The simulator's settings for ``sim``: fast, with losses and retries to exercise.

    A module that needs others overrides this fixture, never ``sim`` itself.
    """
    return FAST_SIM


@pytest.fixture
async def sim(sim_config: SimConfig) -> AsyncIterator[SimServer]:
    """The LLM simulator on a free loopback port, for one test."""
    async with SimServer(sim_config, port=0) as server:
        yield server
