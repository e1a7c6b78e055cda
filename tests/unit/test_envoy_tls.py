"""The TLS transport socket: Envoy YAML parse and errors, export (real Envoy validates it),
/config_dump redaction, the SSLContext policy, and termination on a loopback connection with
the ClientHello already read by tls_inspector."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import cast

import pytest
import uvloop
import yaml

from pysidecar.common.envoy_json import listener as render_listener
from pysidecar.common.tls_context import server_context
from pysidecar.config.export import to_envoy
from pysidecar.config.loader import load
from pysidecar.config.node import ConfigError
from pysidecar.model.tls import DataSource, DownstreamTlsContext, TlsCertificate
from pysidecar.observe.config_dump import config_dump
from pysidecar.proxy.inspect import TlsHello, inspect_tls
from pysidecar.proxy.tls_terminate import HandshakeFailed, terminate
from tests.tlscerts import SeedCerts
from tests.unit.test_export import _validate, needs_envoy
from tests.unit.test_istio_gateway import compile_dir, tls_files

ENVOY_TLS = """
static_resources:
  listeners:
  - name: https
    address: {socket_address: {address: 127.0.0.1, port_value: 8443}}
    listener_filters:
    - name: envoy.filters.listener.tls_inspector
      typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector}
    filter_chains:
    - filter_chain_match: {server_names: [httpbin.example.com]}
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            alpn_protocols: [http/1.1]
            tls_certificates:
            - certificate_chain: {filename: __CRT__}
              private_key: {filename: __KEY__}
            validation_context:
              trusted_ca: {filename: __CA__}
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: up
          cluster: up
  clusters:
  - name: up
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: up
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 9}}}}]}]
"""
CONTEXT = "static_resources.listeners[0].filter_chains[0].transport_socket.typed_config.common_tls_context"


def envoy_yaml(tmp: Path, certs: SeedCerts, crt: Path | None = None) -> str:
    text = ENVOY_TLS.replace("__CRT__", str(crt or certs.httpbin.crt)).replace("__KEY__", str(certs.httpbin.key))
    path = tmp / "envoy.yaml"
    path.write_text(text.replace("__CA__", str(certs.ca.crt)))
    return str(path)


def test_envoy_yaml_transport_socket(tmp_path: Path, certs: SeedCerts) -> None:
    b = load([envoy_yaml(tmp_path, certs)])
    ts = b.listeners[0].filter_chains[0].transport_socket
    assert ts == DownstreamTlsContext(
        tls_certificates=(TlsCertificate(DataSource(str(certs.httpbin.crt)), DataSource(str(certs.httpbin.key))),),
        trusted_ca=DataSource(str(certs.ca.crt)),
        require_client_certificate=True,
        alpn_protocols=("http/1.1",),
    )
    # Export and read back: the same model.
    again = tmp_path / "again.yaml"
    again.write_text(yaml.safe_dump(to_envoy(b)))
    assert load([str(again)]).listeners[0] == b.listeners[0]


def test_unknown_tls_field_is_an_error(tmp_path: Path, certs: SeedCerts) -> None:
    path = Path(envoy_yaml(tmp_path, certs))
    path.write_text(path.read_text().replace("alpn_protocols:", "tls_params: {}\n            alpn_protocols:"))
    with pytest.raises(ConfigError) as e:
        load([str(path)])
    assert e.value.path == CONTEXT + ".tls_params"


def test_bad_pem_file_is_named(tmp_path: Path, certs: SeedCerts) -> None:
    bad = tmp_path / "bad.crt"
    bad.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    with pytest.raises(ConfigError) as e:
        load([envoy_yaml(tmp_path, certs, crt=bad)])
    assert e.value.path == CONTEXT + ".tls_certificates[0].certificate_chain"
    assert str(bad) in e.value.message
    with pytest.raises(ConfigError) as e:
        load([envoy_yaml(tmp_path, certs, crt=tmp_path / "missing.crt")])
    assert "missing.crt" in e.value.message and "cannot read" in e.value.message


def test_config_dump_redacts_inline_keys(tmp_path: Path, certs: SeedCerts) -> None:
    b = compile_dir(tmp_path, tls_files(certs))
    dumped = str(config_dump(b, 0.0))
    assert "PRIVATE KEY" not in dumped and "[redacted]" in dumped
    assert "PRIVATE KEY" in str(to_envoy(b))  # the export keeps it: real Envoy needs it
    rendered = render_listener(b.listeners[0])
    ts = rendered["filter_chains"][0]["transport_socket"]
    assert ts["name"] == "envoy.transport_sockets.tls"


@needs_envoy
@pytest.mark.envoy
def test_real_envoy_accepts_tls_chains(tmp_path: Path, certs: SeedCerts) -> None:
    r = _validate(tmp_path, yaml.safe_dump(to_envoy(load([envoy_yaml(tmp_path, certs)]))))
    assert r.returncode == 0, r.stdout + r.stderr
    # MUTUAL from Secrets: exported inline.
    (tmp_path / "gw").mkdir()
    from tests.tlscerts import tls_secret

    files = tls_files(certs, "MUTUAL", tls_secret("httpbin-credential", certs.httpbin, ca=certs.ca))
    r = _validate(tmp_path, yaml.safe_dump(to_envoy(compile_dir(tmp_path / "gw", files))))
    assert r.returncode == 0, r.stdout + r.stderr


def test_client_certificate_policy(certs: SeedCerts) -> None:
    pair = (TlsCertificate(DataSource(str(certs.httpbin.crt)), DataSource(str(certs.httpbin.key))),)
    assert server_context(DownstreamTlsContext(pair)).verify_mode == ssl.CERT_NONE
    asked = server_context(DownstreamTlsContext(pair, trusted_ca=DataSource(str(certs.ca.crt))))
    assert asked.verify_mode == ssl.CERT_OPTIONAL
    required = DownstreamTlsContext(pair, DataSource(str(certs.ca.crt)), require_client_certificate=True)
    assert server_context(required).verify_mode == ssl.CERT_REQUIRED


# -- termination on a loopback connection -------------------------------------------------------


async def _echo_over_tls(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> bytes:
    """A server that reads the ClientHello first (as tls_inspector does), then terminates TLS
    with it and echoes one line; returns what the client got back."""
    loop = asyncio.get_running_loop()
    failures: list[HandshakeFailed] = []

    class Sniffer(asyncio.Protocol):
        def __init__(self) -> None:
            self.buf = b""

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = cast(asyncio.Transport, transport)

        def data_received(self, data: bytes) -> None:
            self.buf += data
            if isinstance(inspect_tls(self.buf), TlsHello):
                self.task = loop.create_task(self.upgrade())

        async def upgrade(self) -> None:
            try:
                tls, held = await terminate(loop, self.transport, server_ctx, self.buf)
            except HandshakeFailed as e:
                failures.append(e)
                return

            class Echo(asyncio.Protocol):
                def data_received(self, data: bytes) -> None:
                    tls.write(data)

            tls.set_protocol(Echo())
            for d in held.data:
                tls.write(d)

    server = await loop.create_server(Sniffer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx, server_hostname="httpbin.example.com")
        writer.write(b"hello over tls\n")
        line = await asyncio.wait_for(reader.readline(), 5)
        writer.close()
        if line:
            return line
        problem = "EOF"  # TLS 1.3: the client learns of the server's refusal after its Finished
    except (ssl.SSLError, ConnectionError) as e:
        problem = type(e).__name__
    finally:
        server.close()
    await asyncio.sleep(0.1)
    return f"failed: {problem} {[f.stat for f in failures]}".encode()


def _contexts(certs: SeedCerts, mutual: bool) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    pair = (TlsCertificate(DataSource(str(certs.httpbin.crt)), DataSource(str(certs.httpbin.key))),)
    ca = DataSource(str(certs.ca.crt)) if mutual else None
    server = server_context(DownstreamTlsContext(pair, ca, require_client_certificate=mutual))
    client = ssl.create_default_context(cafile=str(certs.ca.crt))
    return server, client


def test_termination_replays_the_client_hello(certs: SeedCerts) -> None:
    server, client = _contexts(certs, mutual=False)
    assert uvloop.run(_echo_over_tls(server, client)) == b"hello over tls\n"


def test_missing_client_certificate_fails_the_handshake(certs: SeedCerts) -> None:
    server, client = _contexts(certs, mutual=True)
    got = uvloop.run(_echo_over_tls(server, client))
    assert got.startswith(b"failed") and b"fail_verify_no_cert" in got
    client.load_cert_chain(str(certs.client.crt), str(certs.client.key))
    assert uvloop.run(_echo_over_tls(server, client)) == b"hello over tls\n"
