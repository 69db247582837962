"""SASL and TLS settings: flags → KafkaConfig → aiokafka keyword arguments, with clear errors."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiokafka.client import AIOKafkaClient

from iterrefine.cli import build_parser
from iterrefine.cli.common import config_from_args
from iterrefine.config import KafkaConfig
from iterrefine.errors import ConfigError
from iterrefine.kafka.clients import client_kwargs

BOOTSTRAP = "kafka-1.example:9093"


@dataclass(frozen=True)
class Certs:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_key: Path


def _openssl(*args: str | Path, cwd: Path) -> None:
    subprocess.run(["openssl", *map(str, args)], cwd=cwd, check=True, capture_output=True,
                   timeout=60)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """A throw-away CA, a server certificate for localhost and a client certificate."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to generate test certificates")
    d = tmp_path_factory.mktemp("certs")
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
             "-subj", "/CN=iterrefine test CA", cwd=d)
    (d / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for name, extra in (("server", ("-extfile", "san.ext")), ("client", ())):
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN=iterrefine test {name}", cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.pem", "-days", "1", *extra, cwd=d)
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-out", "other.key", cwd=d)
    return Certs(ca=d / "ca.pem", server_cert=d / "server.pem", server_key=d / "server.key",
                 client_cert=d / "client.pem", client_key=d / "client.key",
                 other_key=d / "other.key")


def kwargs_for(**settings: Any) -> dict[str, Any]:
    return client_kwargs(KafkaConfig(**settings), BOOTSTRAP)


async def accepted_by_aiokafka(kwargs: dict[str, Any]) -> None:
    """aiokafka's own validation of security settings runs in its client's constructor."""
    AIOKafkaClient(**kwargs)


@pytest.mark.unit
async def test_plaintext_has_no_security_arguments() -> None:
    """The default is PLAINTEXT with our client id and Kafka's retry backoff, nothing else."""
    kwargs = kwargs_for(client_id="curator-7")
    assert kwargs == {"bootstrap_servers": BOOTSTRAP, "client_id": "curator-7",
                      "security_protocol": "PLAINTEXT", "retry_backoff_ms": 100}
    await accepted_by_aiokafka(kwargs)


async def test_ssl_context_trusts_the_ca_and_presents_the_client_certificate(
    certs: Certs,
) -> None:
    """SSL builds a verifying context; a mutual-TLS server accepts it and sees the client."""
    kwargs = kwargs_for(security_protocol="SSL", ssl_cafile=str(certs.ca),
                        ssl_certfile=str(certs.client_cert), ssl_keyfile=str(certs.client_key))
    context = kwargs["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert [dict(c["subject"][0])["commonName"] for c in context.get_ca_certs()] == [
        "iterrefine test CA"]
    await accepted_by_aiokafka(kwargs)

    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=certs.ca)
    server_context.load_cert_chain(certs.server_cert, certs.server_key)
    server_context.verify_mode = ssl.CERT_REQUIRED  # mutual TLS, as brokers with ssl.client.auth
    seen: list[str] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peercert")
        seen.append(dict(peer["subject"][0])["commonName"])
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_context)
    port = server.sockets[0].getsockname()[1]
    async with server:
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context,
                                                  server_hostname="localhost")
        writer.close()
        await asyncio.sleep(0.1)
    assert seen == ["iterrefine test client"]


async def test_sasl_plain_and_scram_take_the_password_from_env_or_file(
    certs: Certs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PLAIN over SASL_PLAINTEXT, SCRAM-SHA-256/512 over SASL_SSL; secrets from env or file."""
    monkeypatch.setenv("KAFKA_PW", "s3cret-env")
    plain = kwargs_for(security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN",
                       sasl_username="curator", sasl_password_env="KAFKA_PW")
    assert (plain["sasl_mechanism"], plain["sasl_plain_username"],
            plain["sasl_plain_password"]) == ("PLAIN", "curator", "s3cret-env")
    assert "ssl_context" not in plain
    await accepted_by_aiokafka(plain)

    secret = tmp_path / "password"
    secret.write_text("s3cret-file\n")
    for mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-512"):
        scram = kwargs_for(security_protocol="SASL_SSL", sasl_mechanism=mechanism,
                           sasl_username="curator", sasl_password_file=str(secret),
                           ssl_cafile=str(certs.ca))
        assert scram["sasl_mechanism"] == mechanism
        assert scram["sasl_plain_password"] == "s3cret-file"  # stripped of the newline
        assert isinstance(scram["ssl_context"], ssl.SSLContext)
        await accepted_by_aiokafka(scram)


@pytest.mark.unit
def test_missing_password_env_is_a_config_error_with_the_fix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An unset password variable names the variable and both ways to provide the secret."""
    monkeypatch.delenv("KAFKA_PW", raising=False)
    with pytest.raises(ConfigError, match=r"KAFKA_PW.*not set; export KAFKA_PW.*--sasl-password"):
        kwargs_for(security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
                   sasl_username="u", sasl_password_env="KAFKA_PW")


@pytest.mark.unit
@pytest.mark.parametrize(("settings", "message"), [
    ({"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN", "sasl_username": "u"},
     "needs a SASL password: pass --sasl-password-env"),
    ({"security_protocol": "SASL_PLAINTEXT", "sasl_password_env": "X"},
     "needs --sasl-mechanism"),
    ({"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN", "sasl_username": "u",
      "sasl_password_file": "/nonexistent/pw"}, "cannot read sasl_password_file"),
    ({"ssl_cafile": "ca.pem"}, "ssl_cafile set, but security_protocol is PLAINTEXT"),
    ({"security_protocol": "SSL", "sasl_username": "u"}, "sasl_username set, but"),
    ({"security_protocol": "SSL", "ssl_cafile": "/nonexistent/ca.pem"},
     "cannot build the TLS context from ssl_cafile=/nonexistent/ca.pem"),
])
def test_incomplete_or_misplaced_settings_are_config_errors(
    settings: dict[str, Any], message: str
) -> None:
    """Each mistake is caught before connecting, with a message that says what to do."""
    with pytest.raises(ConfigError, match=message):
        kwargs_for(**settings)


def test_a_key_that_does_not_match_the_certificate_is_a_config_error(certs: Certs) -> None:
    """A client key from another pair fails with ConfigError naming the files."""
    with pytest.raises(ConfigError, match="ssl_keyfile="):
        kwargs_for(security_protocol="SSL", ssl_certfile=str(certs.client_cert),
                   ssl_keyfile=str(certs.other_key))
    with pytest.raises(ConfigError, match="without ssl_certfile"):
        kwargs_for(security_protocol="SSL", ssl_keyfile=str(certs.client_key))


@pytest.mark.unit
def test_cli_flags_reach_the_kafka_config() -> None:
    """Every security flag lands in KafkaConfig; there is no flag for the password itself."""
    args = build_parser().parse_args([
        "worker", "refine", "--security-protocol", "SASL_SSL", "--sasl-mechanism",
        "SCRAM-SHA-256", "--sasl-username", "curator", "--sasl-password-env", "KAFKA_PW",
        "--ssl-cafile", "ca.pem", "--ssl-certfile", "c.pem", "--ssl-keyfile", "c.key",
        "--client-id", "curator-7", "--group-instance-id", "refine-0",
        "--bootstrap", BOOTSTRAP,
    ])
    kafka = config_from_args(args).kafka
    assert kafka == KafkaConfig(
        bootstrap_servers=BOOTSTRAP, client_id="curator-7", security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-256", sasl_username="curator", sasl_password_env="KAFKA_PW",
        ssl_cafile="ca.pem", ssl_certfile="c.pem", ssl_keyfile="c.key",
        group_instance_id="refine-0",
    )
    file_args = build_parser().parse_args(["export", "-o", "x", "--sasl-password-file", "/pw"])
    assert config_from_args(file_args).kafka.sasl_password_file == "/pw"
    for command in (["worker", "refine"], ["ingest", "-"], ["replay", "--topic", "items.raw",
                                                             "--from-offset", "0"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args([*command, "--sasl-password", "hunter2"])
