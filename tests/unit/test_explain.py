"""`pysidecar explain`: the iptables walk over the rules `pysidecar init` installs, and the
decision trace through seed configs, made by the proxy's own decision functions."""

from __future__ import annotations

from pathlib import Path

from pysidecar.config.loader import load
from pysidecar.config.sidecar import standard_sidecar
from pysidecar.demo import configs
from pysidecar.explain.cli import main as explain_main
from pysidecar.explain.decisions import Question, explain
from pysidecar.explain.iptables_trace import Packet, trace_nat
from pysidecar.interception.options import options_from_sources
from pysidecar.interception.render import render_listing
from pysidecar.interception.rules import Family, build_rule_set
from pysidecar.model import SocketAddress

# Istio's injector flags; what `iptables-save -t nat` prints after `pysidecar init` with them.
INJECTOR_FLAGS = {
    "envoy_port": "15001", "inbound_capture_port": "15006", "proxy_uid": "1337",
    "inbound_interception_mode": "REDIRECT", "service_cidr": "*", "service_exclude_cidr": "",
    "inbound_ports": "*", "local_exclude_ports": "15090,15021,15020",
}  # fmt: skip
RULES = render_listing(build_rule_set(options_from_sources(INJECTOR_FLAGS, {}), Family.V4))


def steps(trace: object) -> dict[str, str]:
    return dict(trace.steps)


def test_the_app_is_redirected_to_15001_and_the_proxy_is_not() -> None:
    app = trace_nat(RULES, Packet("198.19.0.10", 80, uid=0))
    assert app.redirect_port == 15001 and app.steps[-1].endswith("REDIRECT --to-ports 15001")
    assert app.steps[0] == "nat OUTPUT rule 1: -A OUTPUT -j ISTIO_OUTPUT"
    proxy = trace_nat(RULES, Packet("198.19.0.10", 80, uid=1337, gid=1337))
    assert proxy.redirect_port is None and "--uid-owner 1337 -j RETURN" in proxy.steps[1]
    local = trace_nat(RULES, Packet("127.0.0.1", 8080, uid=0))
    assert local.redirect_port is None  # the app talking to itself over loopback


def test_inbound_is_redirected_to_15006_except_the_excluded_ports() -> None:
    assert trace_nat(RULES, Packet("10.1.0.5", 8080, outbound=False)).redirect_port == 15006
    stats = trace_nat(RULES, Packet("10.1.0.5", 15090, outbound=False))
    assert stats.redirect_port is None and any("--dport 15090 -j RETURN" in step for step in stats.steps)


def test_an_unknown_match_stops_the_walk_instead_of_guessing() -> None:
    text = "*nat\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -m conntrack --ctstate NEW -j REDIRECT --to-ports 1\nCOMMIT\n"
    t = trace_nat(text, Packet("10.0.0.1", 80))
    assert t.redirect_port is None and t.verdict == "unknown: cannot evaluate -m conntrack here"


def _seed000(tmp_path: Path, mode: str) -> str:
    (tmp_path / "mesh.yaml").write_text(configs.mesh(mode))
    (tmp_path / "se.yaml").write_text(configs.SE_HTTPBIN)
    (tmp_path / "vs.yaml").write_text(configs.VS_HTTPBIN_TIMEOUT)
    return str(tmp_path)


def test_seed_000_service_entry_with_its_timeout(tmp_path: Path) -> None:
    b = load([_seed000(tmp_path, "REGISTRY_ONLY")])
    nat = trace_nat(RULES, Packet("198.19.0.10", 80))
    s = steps(explain(b, Question(SocketAddress("198.19.0.10", 80), "httpbin.org", "/delay/5"), nat))
    assert s["interception"] == "REDIRECT to port 15001"
    assert s["accepting listener"].startswith("virtualOutbound")
    assert s["listener"].startswith("0.0.0.0_80: use_original_dst")
    assert s["filter chain"] == "0.0.0.0_80: matches transport_protocol raw_buffer; application_protocols http/1.1,h2c"
    assert s["virtual host"].startswith("httpbin.org:80")
    assert s["route action"].startswith("cluster outbound|80||httpbin.org; timeout 3s")
    assert s["endpoint"] == "httpbin.org:80"


def test_registry_only_block_all_and_blackhole(tmp_path: Path) -> None:
    b = load([_seed000(tmp_path, "REGISTRY_ONLY")])
    http = steps(explain(b, Question(SocketAddress("198.19.0.11", 80), "edition.cnn.com")))
    assert http["virtual host"].startswith("block_all") and http["local reply"] == "502 direct_response (0 bytes)"
    tcp = steps(explain(b, Question(SocketAddress("198.19.0.11", 3306))))
    assert tcp["listener"].startswith("virtualOutbound keeps it")
    assert tcp["tcp_proxy"] == "stat_prefix BlackHoleCluster: cluster BlackHoleCluster"
    assert tcp["endpoint"].startswith("none")


def test_inbound_passthrough_from_127_0_0_6() -> None:
    nat = trace_nat(RULES, Packet("10.1.0.5", 8080, outbound=False))
    s = steps(explain(standard_sidecar(), Question(SocketAddress("10.1.0.5", 8080), "app", inbound=True), nat))
    assert s["filter chain"].startswith("virtualInbound-catchall-http: matches prefix_ranges 0.0.0.0/0")
    assert s["endpoint"] == "10.1.0.5:8080 (the original destination)"
    assert s["upstream TLS"] == "plaintext; connects from 127.0.0.6"


def test_the_command_prints_the_trace(tmp_path: Path, capsys: object) -> None:
    rules = tmp_path / "nat.txt"
    rules.write_text(RULES)
    import argparse

    from pysidecar.explain.cli import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    (tmp_path / "c").mkdir()
    args = parser.parse_args(["198.19.0.10:80", "--host", "httpbin.org", "-c", _seed000(tmp_path / "c", "ALLOW_ANY"),
                              "--iptables", str(rules)])  # fmt: skip
    assert explain_main(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "iptables: nat OUTPUT rule 1: -A OUTPUT -j ISTIO_OUTPUT"
    assert "route action: cluster outbound|80||httpbin.org; timeout 3s; retries 2" in out
