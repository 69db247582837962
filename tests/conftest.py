"""Shared fixtures. Kafka tests run against the real embedded broker, never a fake; the
production-relevant ones also against a second, independent broker (``kafka``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from iterrefine.broker.embedded import EmbeddedBroker
from iterrefine.sim import SimConfig, SimServer

from .brokers import NOIDA_MISSING, NoidaBroker
from .pipeline_support import FAST_SIM


@pytest.fixture(scope="session")
def broker() -> Iterator[str]:
    """Bootstrap servers of a private in-memory Tansu broker, shared by the whole session."""
    with EmbeddedBroker() as embedded:
        yield embedded.bootstrap_servers


@pytest.fixture(scope="session")
def noida() -> Iterator[str]:
    """Bootstrap servers of a private noida-db broker (Kafka-like where Tansu is lenient),
    shared by the whole session."""
    if NOIDA_MISSING is not None:
        pytest.skip(NOIDA_MISSING)
    started = NoidaBroker()
    try:
        started.start()
    except (OSError, RuntimeError) as exc:  # e.g. a platform its wheel's binary does not run on
        pytest.skip(f"noida-db cannot run here, the checks stay Tansu-only: {exc}")
    try:
        yield started.bootstrap_servers
    finally:
        started.stop()


@pytest.fixture(params=["tansu", "noida"])
def kafka(request: pytest.FixtureRequest) -> str:
    """Bootstrap servers of each broker in turn: the embedded Tansu, then noida-db.

    ``request.param`` names the broker, for a test that documents where one differs.
    """
    return str(request.getfixturevalue("broker" if request.param == "tansu" else "noida"))


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
