"""The embedded broker, its durable mode, and `iterrefine broker up|status|down`."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import OffsetAndMetadata, TopicPartition

from iterrefine.broker.embedded import EmbeddedBroker, broker_answers
from iterrefine.broker.state import ensure_broker
from iterrefine.errors import BrokerError, ConfigError
from iterrefine.processes import free_port, pid_alive


def _topic() -> str:
    return f"broker-test-{uuid.uuid4().hex[:10]}"


async def _produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value, key=value, partition=0)
    finally:
        await producer.stop()


async def _read_partition0(bootstrap: str, topic: str, count: int) -> list[bytes]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        values: list[bytes] = []
        for _ in range(50):
            batches = await consumer.getmany(tp, timeout_ms=200)
            values += [msg.value for msg in batches.get(tp, [])]
            if len(values) >= count:
                break
        return values
    finally:
        await consumer.stop()


async def test_fixture_broker_round_trips_a_record(broker: str) -> None:
    """The session `broker` fixture is a real Kafka endpoint: a produced record can be consumed."""
    topic = _topic()
    await _produce(broker, topic, [b"hello"])
    assert await _read_partition0(broker, topic, 1) == [b"hello"]


def test_taken_port_is_a_broker_error_naming_port_and_fix() -> None:
    """Starting on a port someone else holds fails fast, naming the port and the way out."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(BrokerError) as excinfo:
            EmbeddedBroker(port=port).start()
    message = str(excinfo.value)
    assert f"port {port}" in message
    assert "--port N" in message
    assert "iterrefine broker down" in message


@pytest.mark.unit
def test_probe_rejects_a_listener_that_does_not_speak_kafka() -> None:
    """Readiness means answering ApiVersions, not merely accepting a TCP connection."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        assert not broker_answers(silent.getsockname()[1], timeout_s=0.2)


def test_unclosed_broker_warns_and_does_not_leak_its_process() -> None:
    """A broker dropped without stop() raises ResourceWarning and still kills its child."""
    embedded = EmbeddedBroker()
    embedded.start()
    pid = embedded.pid
    assert pid is not None
    with pytest.warns(ResourceWarning, match="Unclosed EmbeddedBroker"):
        del embedded
        gc.collect()
    assert not pid_alive(pid)


def test_durable_without_data_dir_is_a_config_error() -> None:
    """Durable mode refuses to start without a data dir and says to pass --data-dir."""
    with pytest.raises(ConfigError, match="--data-dir"):
        EmbeddedBroker(durable=True)


@pytest.mark.slow
async def test_durable_broker_keeps_records_and_offsets_across_sigkill(tmp_path: Path) -> None:
    """Durable mode: records and a committed offset survive SIGKILL of Tansu and SeaweedFS."""
    topic, group = _topic(), "durable-group"
    values = [f"v{i}".encode() for i in range(10)]
    tp = TopicPartition(topic, 0)

    async with EmbeddedBroker(data_dir=tmp_path, durable=True) as first:
        await _produce(first.bootstrap_servers, topic, values)
        consumer = AIOKafkaConsumer(bootstrap_servers=first.bootstrap_servers, group_id=group,
                                    enable_auto_commit=False)
        await consumer.start()
        consumer.assign([tp])
        await consumer.commit({tp: OffsetAndMetadata(7, "resume-here")})
        await consumer.stop()
        pids = [first.pid, first.weed_pid]
        for pid in pids:
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
        first.detach()  # nothing left to stop gracefully
    for pid in pids:
        assert pid is not None
        for _ in range(250):  # SIGKILL is prompt; this reaps our zombies
            if not pid_alive(pid):
                break
            await asyncio.sleep(0.02)

    async with EmbeddedBroker(data_dir=tmp_path, durable=True) as second:
        assert await _read_partition0(second.bootstrap_servers, topic, 10) == values
        consumer = AIOKafkaConsumer(bootstrap_servers=second.bootstrap_servers, group_id=group,
                                    enable_auto_commit=False)
        await consumer.start()
        try:
            assert await consumer.committed(tp) == 7
        finally:
            await consumer.stop()


# --- CLI -------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "iterrefine.cli", "broker", *args],
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture
def cli_data_dir(tmp_path: Path) -> Iterator[str]:
    data_dir = str(tmp_path / "state")
    yield data_dir
    _cli("down", "--data-dir", data_dir)


@pytest.mark.slow
def test_cli_up_status_down(cli_data_dir: str) -> None:
    """`broker up` leaves a detached broker that `status` reports and `down` removes."""
    port = str(free_port())
    assert _cli("status", "--data-dir", cli_data_dir).returncode == 1

    up = _cli("up", "--data-dir", cli_data_dir, "--port", port)
    assert up.returncode == 0, up.stderr
    assert f"127.0.0.1:{port}" in up.stdout
    state = json.loads((Path(cli_data_dir) / "broker.json").read_text())
    assert broker_answers(int(port))

    status = _cli("status", "--data-dir", cli_data_dir)
    assert status.returncode == 0
    assert "running at" in status.stdout and str(state["pid"]) in status.stdout

    down = _cli("down", "--data-dir", cli_data_dir)
    assert down.returncode == 0
    assert not (Path(cli_data_dir) / "broker.json").exists()
    assert not pid_alive(state["pid"])
    assert _cli("status", "--data-dir", cli_data_dir).returncode == 1


def test_cli_up_twice_is_one_broker(cli_data_dir: str) -> None:
    """A second `broker up` finds the live broker and says so instead of starting another."""
    port = str(free_port())
    assert _cli("up", "--data-dir", cli_data_dir, "--port", port).returncode == 0
    pid = json.loads((Path(cli_data_dir) / "broker.json").read_text())["pid"]

    again = _cli("up", "--data-dir", cli_data_dir, "--port", port)
    assert again.returncode == 0, again.stderr
    assert f"already running at 127.0.0.1:{port}" in again.stdout
    assert json.loads((Path(cli_data_dir) / "broker.json").read_text())["pid"] == pid


def test_cli_up_replaces_a_stale_state_file(cli_data_dir: str) -> None:
    """A state file whose broker died is reported as not running and replaced by `up`."""
    port = free_port()
    Path(cli_data_dir).mkdir(parents=True)
    stale = {"bootstrap_servers": f"127.0.0.1:{port}", "port": port, "pid": 2**22 + 1,
             "durable": False}
    (Path(cli_data_dir) / "broker.json").write_text(json.dumps(stale))

    status = _cli("status", "--data-dir", cli_data_dir)
    assert status.returncode == 1 and "stale" in status.stdout

    up = _cli("up", "--data-dir", cli_data_dir, "--port", str(port))
    assert up.returncode == 0, up.stderr
    assert json.loads((Path(cli_data_dir) / "broker.json").read_text())["pid"] != stale["pid"]
    assert broker_answers(port)


def test_cli_up_on_a_taken_port_exits_2_with_the_fix(cli_data_dir: str) -> None:
    """`broker up` on an occupied port exits 2 with a one-line error naming the port."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        up = _cli("up", "--data-dir", cli_data_dir, "--port", str(port))
    assert up.returncode == 2
    assert f"port {port}" in up.stderr and "--port N" in up.stderr


@pytest.mark.slow
def test_cli_durable_down_stops_seaweed_too(cli_data_dir: str) -> None:
    """`broker up --durable` records the SeaweedFS pid, and `down` stops it after Tansu."""
    up = _cli("up", "--data-dir", cli_data_dir, "--port", str(free_port()), "--durable")
    assert up.returncode == 0, up.stderr
    state = json.loads((Path(cli_data_dir) / "broker.json").read_text())
    assert state["durable"] is True and pid_alive(state["weed_pid"])

    assert _cli("down", "--data-dir", cli_data_dir).returncode == 0
    assert not pid_alive(state["pid"])
    assert not pid_alive(state["weed_pid"])


@pytest.mark.slow
def test_ensure_broker_reuses_a_running_background_broker(cli_data_dir: str) -> None:
    """`ensure_broker` returns the `broker up` broker if one runs, else starts one it hands over."""
    port = free_port()
    assert _cli("up", "--data-dir", cli_data_dir, "--port", str(port)).returncode == 0
    bootstrap, started = ensure_broker(cli_data_dir)
    assert (bootstrap, started) == (f"127.0.0.1:{port}", None)

    assert _cli("down", "--data-dir", cli_data_dir).returncode == 0
    bootstrap, started = ensure_broker(cli_data_dir)
    assert started is not None
    try:
        assert bootstrap == started.bootstrap_servers
        assert broker_answers(started.port or 0)
    finally:
        started.stop()
