"""Shared fixtures. Kafka tests run against the real embedded broker, never a fake."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from iterrefine.broker.embedded import EmbeddedBroker


@pytest.fixture(scope="session")
def broker() -> Iterator[str]:
    """Bootstrap servers of a private in-memory Tansu broker, shared by the whole session."""
    with EmbeddedBroker() as embedded:
        yield embedded.bootstrap_servers
