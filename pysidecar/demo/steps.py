"""The demo's steps: seed 000 (egress), seed 002 (Envoy) and seed 001 (ingress) replayed against
lab pods, then seed 000's egress gateway.

Each step says what it shows, does what the tutorial does (the same curl, the same YAML), and
checks the tutorial's outcome with `expect`; a step that does not see it raises `Unexpected`
and the demo reports the step as failed, never papering over it. A step also promises how many
access-log lines each proxy writes for it (`Step.log_lines`, checked by the runner) and names the
counters worth showing (`Step.counters`, regexes over the admin's stat names).

Steps run in order and build on each other: the mesh config and the resources written by one
stay for the next, as they would in a cluster.
"""

from __future__ import annotations

import json
import math
import re
import shlex
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from pysidecar.demo import configs, mesh_security
from pysidecar.demo.world import RELOAD_TIMEOUT, World, expect
from pysidecar.lab import certs

Out = Callable[[str], None]
T = TypeVar("T")

SETTLE = 1.0

SPLIT_REQUESTS = 100
SPLIT_V2_SHARE = 0.6
SPLIT_SIGMAS = 4  # a correct 60/40 split falls outside 4 standard deviations ~1 run in 15000


@dataclass(frozen=True)
class Step:
    title: str
    explain: str
    run: Callable[[World, Out], None]
    counters: tuple[str, ...] = ()  # regexes: changed counters matching them are shown
    proxies: tuple[str, ...] = ("client",)  # whose stats / metrics / access log to show
    # Access-log lines each proxy must write for the step (at least; retries may add some).
    log_lines: tuple[tuple[str, int], ...] = ()


def _shell(cmd: str, out: Out, text: str) -> None:
    """Show a command and its output as a terminal would."""
    out(f"$ {cmd}")
    for line in text.rstrip("\n").splitlines():
        out(f"  {line}")


def _tcp_shown(got: bytes | None) -> str:
    if got is None:
        return "(reset: closed by the sidecar, nothing back)"
    return got.decode("utf-8", "replace") if got else "(closed by the sidecar, nothing back)"


def _head(w: World, pod_name: str, *args: str) -> tuple[str, list[str]]:
    """(status line, header lines) of `curl -sI ARGS` in the pod."""
    pod = w.lab.pod(pod_name)
    lines = w.curl(pod, "-I", *args).replace("\r", "").splitlines()
    return (lines[0] if lines else "", [x for x in lines[1:] if x])


WHOSE = {"client": "the sidecar's", "ingress": "the ingress gateway's", "egress": "the egress gateway's"}


def _show_file(out: Out, name: str, text: str, *pods: str) -> None:
    where = " and ".join(WHOSE[p] for p in pods)
    _shell(f"cat > {name} <<EOF   # in {where} -c director{'ies' if len(pods) > 1 else 'y'}", out, f"{text}EOF")


def _apply(w: World, out: Out, name: str, text: str, pod: str = "client") -> None:
    """Write `name` into the proxy's config directory, show it, wait for the hot reload."""
    _show_file(out, name, text, pod)
    took = w.reload(name, text, pod)
    out(f"(the proxy reloaded in {took:.1f}s, no restart)")


def _settle(probe: Callable[[], T], ok: Callable[[T], bool], timeout: float = SETTLE) -> T:
    """`probe()` until `ok` says the new config shows, or `timeout`; the last result.

    The reload counter moves when the main process has compiled the files, a moment before
    the workers swap; one quick retry covers that window without a blind sleep.
    """
    deadline = time.monotonic() + timeout
    result = probe()
    while not ok(result) and time.monotonic() < deadline:
        time.sleep(0.05)
        result = probe()
    return result


# -- 1 -------------------------------------------------------------------------------------


def rules(w: World, out: Out) -> None:
    r = w.client.run(["iptables-save", "-t", "nat"], check=True)
    lines = [x for x in r.stdout.splitlines() if x.startswith(("-A", ":ISTIO"))]
    _shell("iptables-save -t nat   # in the client pod", out, "\n".join(lines))
    expect(any("--to-ports 15001" in x for x in lines), "ISTIO_REDIRECT: outbound TCP to 15001")
    expect(any("--to-ports 15006" in x for x in lines), "ISTIO_IN_REDIRECT: inbound TCP to 15006")
    expect(any("--uid-owner 1337" in x for x in lines), "the proxy's uid 1337 exempt (no loop)")


# -- 2 -------------------------------------------------------------------------------------


def allow_any(w: World, out: Out) -> None:
    code, body = w.status(w.client, "http://httpbin.org/")
    _shell("curl http://httpbin.org/", out, body)
    expect(
        code == "200" and "hello from httpbin.org" in body,
        f"200 from httpbin.org, got {code} {body!r}",
    )
    code, body = w.status(w.client, "http://edition.cnn.com/")
    _shell("curl http://edition.cnn.com/", out, body)
    expect(
        code == "200" and "edition.cnn.com" in body,
        f"200 from edition.cnn.com, got {code} {body!r}",
    )
    got = w.tcp_exchange(w.client, w.httpbin, 7, b"ping\n")
    _shell("echo ping | nc httpbin.org 7   # plain TCP to the echo server", out, _tcp_shown(got))
    expect(got == b"ping\n", f"the echo server's b'ping\\n' back, got {got!r}")


# -- 3 -------------------------------------------------------------------------------------


def registry_only(w: World, out: Out) -> None:
    _apply(w, out, "mesh.yaml", configs.mesh("REGISTRY_ONLY", zipkin=w.zipkin))
    status, headers = _settle(
        lambda: _head(w, "client", "http://httpbin.org/"), lambda r: "502" in r[0]
    )
    _shell("curl -I http://httpbin.org/", out, "\n".join([status, *headers]))
    expect(status == "HTTP/1.1 502 Bad Gateway", f"HTTP/1.1 502 Bad Gateway, got {status!r}")
    expect("server: envoy" in (h.lower() for h in headers), f"server: envoy, got {headers}")
    got = w.tcp_exchange(w.client, w.httpbin, 7, b"ping\n")
    _shell("echo ping | nc httpbin.org 7", out, _tcp_shown(got))
    expect(not got, f"the connection closed without data (BlackHoleCluster), got {got!r}")


# -- 4 -------------------------------------------------------------------------------------

SIDECAR_HEADERS = re.compile(r"^(x-envoy-|x-b3-|x-request-id|x-forwarded-)", re.IGNORECASE)


def service_entry(w: World, out: Out) -> None:
    _apply(w, out, "httpbin-se.yaml", configs.SE_HTTPBIN)
    code, body = _settle(
        lambda: w.status(w.client, "http://httpbin.org/headers"), lambda r: r[0] == "200"
    )
    try:
        headers: dict[str, str] = json.loads(body)["headers"]
    except (ValueError, KeyError):
        headers = {}
    added = {k: v for k, v in headers.items() if SIDECAR_HEADERS.match(k)}
    _shell(
        "curl http://httpbin.org/headers   # the request headers the server saw; sidecar-added:",
        out,
        json.dumps(added, indent=1),
    )
    expect(code == "200", f"200 from httpbin.org now, got {code} {body[:200]!r}")
    op = headers.get("X-Envoy-Decorator-Operation")
    expect(op == "httpbin.org:80/*", f"X-Envoy-Decorator-Operation: httpbin.org:80/*, got {op!r}")
    # Seed 000's tracing headers: the sidecar's root span, 128-bit trace id whose low half is the
    # span id, sampled (the demo mesh samples 100 %).
    trace, span = headers.get("X-B3-Traceid", ""), headers.get("X-B3-Spanid", "")
    expect(
        headers.get("X-B3-Sampled") == "1" and len(trace) == 32 and trace[16:] == span,
        f"X-B3-Traceid (32 hex digits, ending in X-B3-Spanid) and X-B3-Sampled: 1, got {trace!r} {span!r}",
    )
    status, _ = _head(w, "client", "http://edition.cnn.com/")
    _shell("curl -I http://edition.cnn.com/   # not registered", out, status)
    expect(status == "HTTP/1.1 502 Bad Gateway", f"edition.cnn.com still 502, got {status!r}")


# -- 5 -------------------------------------------------------------------------------------


def timeout(w: World, out: Out) -> None:
    _apply(w, out, "httpbin-vs.yaml", configs.VS_HTTPBIN_TIMEOUT)
    # The route's timeout also shows as a request header (seed 000 lists it among the
    # sidecar-added ones); seeing it means the workers run the new config.
    _, body = _settle(
        lambda: w.status(w.client, "http://httpbin.org/headers"),
        lambda r: '"X-Envoy-Expected-Rq-Timeout-Ms": "3000"' in r[1],
    )
    line = next((x.strip() for x in body.splitlines() if "Expected-Rq-Timeout" in x), "(none)")
    _shell("curl -s http://httpbin.org/headers | grep Timeout", out, line)
    t0 = time.monotonic()
    code, body = w.status(w.client, "http://httpbin.org/delay/5")
    elapsed = time.monotonic() - t0
    _shell(
        'time curl -s -w "\\n%{http_code}\\n" http://httpbin.org/delay/5',
        out,
        f"{body}\n{code}\nreal {elapsed:.3f}s",
    )
    expect(code == "504", f"504 (the route's 3 s timeout), got {code}")
    expect(body == "upstream request timeout", f"body 'upstream request timeout', got {body!r}")
    expect(2.5 <= elapsed <= 4.5, f"the answer after ~3 s, got {elapsed:.2f}s")


# -- 6 -------------------------------------------------------------------------------------


def split(w: World, out: Out) -> None:
    _apply(w, out, "myngx.yaml", configs.myngx_split(w.ngxv1.ip, w.ngxv2.ip))
    # The first request doubles as the check that the workers run the new config (before,
    # myngx.example is unknown: 502); it counts as one of the SPLIT_REQUESTS.
    _, first = _settle(lambda: w.status(w.client, "http://myngx.example/"), lambda r: r[0] == "200")
    # One curl, many URLs: one keep-alive connection, each request routed on its own.
    rest = w.curl(w.client, *["http://myngx.example/"] * (SPLIT_REQUESTS - 1), timeout=30)
    counts = Counter((first + rest).split())
    v1, v2 = counts.get("v1", 0), counts.get("v2", 0)
    mean = SPLIT_REQUESTS * SPLIT_V2_SHARE
    sigma = math.sqrt(SPLIT_REQUESTS * SPLIT_V2_SHARE * (1 - SPLIT_V2_SHARE))
    low, high = math.ceil(mean - SPLIT_SIGMAS * sigma), math.floor(mean + SPLIT_SIGMAS * sigma)
    _shell(
        f"for i in $(seq {SPLIT_REQUESTS}); do curl http://myngx.example/; done | sort | uniq -c",
        out,
        f"{v1:4d} v1\n{v2:4d} v2",
    )
    out(f"v2 expected {mean:.0f} ± {SPLIT_SIGMAS} sd ({low}..{high}) of {SPLIT_REQUESTS}")
    expect(v1 + v2 == SPLIT_REQUESTS, f"{SPLIT_REQUESTS} answers, all v1 or v2, got {dict(counts)}")
    expect(low <= v2 <= high, f"v2 in {low}..{high}, got {v2}")


# -- 7 -------------------------------------------------------------------------------------


def inbound(w: World, out: Out) -> None:
    out("a) the client pod's Istio sidecar (15006 → InboundPassthroughClusterIpv4):")
    code, body = w.status(w.nettool, f"http://{w.client.ip}:8080/ip")
    _shell(f"curl http://{w.client.ip}:8080/ip   # from nettool", out, body)
    try:
        origin = json.loads(body).get("origin")
    except ValueError:
        origin = None
    expect(
        code == "200" and origin == "127.0.0.6",
        f"the app to see the proxy's 127.0.0.6, got {code} {body!r}",
    )
    out("b) seed 002's myapp: one PREROUTING rule to 15006, an Envoy config adding `myname`:")
    _shell(
        "iptables -t nat -S PREROUTING   # in myapp",
        out,
        w.myapp.run(["iptables", "-t", "nat", "-S", "PREROUTING"]).stdout,
    )
    r = w.nettool.run(["curl", "-s", "-i", "-m", "10", "http://myapp/"], timeout=15)
    text = r.stdout.replace("\r", "")
    _shell("curl -i http://myapp/   # from nettool", out, text)
    head = text.split("\n\n", 1)[0].lower().splitlines()
    expect(bool(head) and head[0].startswith("http/1.1 200"), f"200 from myapp, got {head[:1]}")
    expect(
        "myname: chengzw" in head, f"the sidecar's `myname: chengzw` response header, got {head}"
    )
    expect("server: envoy" in head, f"server: envoy, got {head}")


# -- 8 -------------------------------------------------------------------------------------


def listeners(w: World, out: Out) -> None:
    r = w.client.run([sys.executable, "-m", "pysidecar", "proxy-config", "listeners"], timeout=20)
    _shell(
        "pysidecar proxy-config listeners   # in the client pod, like istioctl's",
        out,
        r.stdout or r.stderr,
    )
    expect(r.returncode == 0, f"proxy-config to exit 0, got {r.returncode}: {r.stderr.strip()}")
    rows = [x.split() for x in r.stdout.splitlines()[1:]]
    expect(
        any(x[:2] == ["0.0.0.0", "80"] and "Route:" in x for x in rows),
        "0.0.0.0 80 … Route: 80 (the HTTP chain of the sniffed port)",
    )
    expect(any(x[:2] == ["0.0.0.0", "15001"] for x in rows), "the 15001 virtualOutbound rows")
    expect(any(x[:2] == ["0.0.0.0", "15006"] for x in rows), "the 15006 virtualInbound rows")
    r = w.client.run(
        [sys.executable, "-m", "pysidecar", "proxy-config", "routes", "--name", "80"], timeout=20
    )
    _shell("pysidecar proxy-config routes --name 80", out, r.stdout or r.stderr)
    expect(
        r.returncode == 0, f"proxy-config routes to exit 0, got {r.returncode}: {r.stderr.strip()}"
    )
    expect("block_all" in r.stdout, "the block_all virtual host (REGISTRY_ONLY) in route 80")


# -- 9 -------------------------------------------------------------------------------------

HTTPBIN_HOST = "httpbin.example.com"
HELLO_HOST = "helloworld-v1.example.com"


def _ingress_http(gateways: str) -> str:
    """Seed 001's Gateway httpbin-gateway and VirtualService httpbin (bound to `gateways`)."""
    gw = configs.GATEWAY_HTTP.replace("__HOST__", HTTPBIN_HOST)
    vs = configs.VS_HTTPBIN.replace("__HOST__", HTTPBIN_HOST).replace("__GW__", gateways)
    return f"{gw.lstrip()}---{vs}"


def ingress_routing(w: World, out: Out) -> None:
    _apply(w, out, "httpbin-gateway.yaml", _ingress_http("httpbin-gateway"), "ingress")
    base = f"http://{w.ingress.ip}:8080"
    out(f"INGRESS_HOST={w.ingress.ip} INGRESS_PORT=8080   # istio-ingressgateway's 80 → targetPort 8080")
    host = f"-HHost:{HTTPBIN_HOST}"
    status, headers = _settle(lambda: _head(w, "nettool", host, f"{base}/status/200"), lambda r: "200" in r[0])
    _shell(f"curl -s -I {host} http://$INGRESS_HOST:$INGRESS_PORT/status/200   # from nettool", out,
           "\n".join([status, *headers]))  # fmt: skip
    expect(status == "HTTP/1.1 200 OK", f"HTTP/1.1 200 OK (prefix /status), got {status!r}")
    expect("server: istio-envoy" in headers, f"server: istio-envoy, got {headers}")
    status, headers = _head(w, "nettool", host, f"{base}/headers")
    _shell(f"curl -s -I {host} http://$INGRESS_HOST:$INGRESS_PORT/headers", out, "\n".join([status, *headers]))
    expect(status == "HTTP/1.1 404 Not Found", f"HTTP/1.1 404 Not Found (no route for /headers), got {status!r}")


# -- 10 ------------------------------------------------------------------------------------

CURL_TLS_LINES = re.compile(r"^\*\s+(SSL connection using|Server certificate|subject:|issuer:)|^< (HTTP/|server:)")


def _https(w: World, host: str, path: str, ca: Path) -> tuple[str, str, list[str]]:
    """The seed's `curl -v --resolve ... --cacert ...` from nettool: (status, body, the TLS and
    response lines of curl's -v log)."""
    r = w.nettool.run(
        ["curl", "-sv", "-m", "10", "-w", "\n%{http_code}", f"-HHost:{host}",
         "--resolve", f"{host}:8443:{w.ingress.ip}", "--cacert", str(ca), f"https://{host}:8443{path}"],
        timeout=15,
    )  # fmt: skip
    body, _, code = r.stdout.rpartition("\n")
    shown = [x.rstrip("\r") for x in r.stderr.splitlines() if CURL_TLS_LINES.match(x)]
    return code, body, shown


def _subject(lines: list[str]) -> str:
    return next((x.split("subject:", 1)[1].strip() for x in lines if "subject:" in x), "")


def _tls_request(w: World, out: Out, host: str, path: str, want: str, ca: Path) -> None:
    """The seed's curl to the secure port: `want` back, served with `host`'s own certificate."""
    code, body, lines = _settle(lambda: _https(w, host, path, ca), lambda r: r[0] == want, RELOAD_TIMEOUT)
    cmd = (
        f'curl -v -HHost:{host} --resolve "{host}:$SECURE_INGRESS_PORT:$INGRESS_HOST" '
        f'--cacert example.com.crt "https://{host}:$SECURE_INGRESS_PORT{path}"'
    )
    _shell(cmd, out, "\n".join([*lines, body] if body else lines))
    expect(code == want, f"{want} from https://{host}{path}, got {code} {body[:80]!r}")
    subject = _subject(lines)
    expect(subject.startswith(f"CN={host}"), f"{host}'s own certificate (by SNI), got subject {subject!r}")


def ingress_tls(w: World, out: Out) -> None:
    d = Path(w.mkdtemp("certs"))
    try:
        ran: list[list[str]] = []
        ca = certs.make_ca(d, show=ran.append)
        httpbin = certs.issue(d, ca, HTTPBIN_HOST, "httpbin organization", 0, show=ran.append)
        hello = certs.issue(d, ca, HELLO_HOST, "helloworld organization", 1, show=ran.append)
        out(f"$ cd {d}   # a temporary directory, removed at the end of this step")
        for argv in ran:
            out("$ " + shlex.join(argv).replace(f"{d}/", ""))
        secrets = [("httpbin-credential", httpbin, HTTPBIN_HOST), ("helloworld-credential", hello, HELLO_HOST)]
        for name, _, host in secrets:
            out(f"$ kubectl create -n istio-system secret tls {name} --key={host}.key --cert={host}.crt")
        out("  (here: credentials.yaml in the ingress gateway's -c directory, the Secrets kubectl writes)")
        gateway = configs.GATEWAY_TLS.replace("__MODE__", "SIMPLE").lstrip() + "---" + configs.VS_HELLOWORLD
        _show_file(out, "mygateway.yaml", gateway, "ingress")
        out("(and httpbin-gateway.yaml's VirtualService now names `gateways: [httpbin-gateway, mygateway]`)")
        took = w.reload_many({"ingress": {
            "credentials.yaml": "---\n".join(certs.tls_secret(name, pair) for name, pair, _ in secrets),
            "httpbin-gateway.yaml": _ingress_http("httpbin-gateway, mygateway"),
            "mygateway.yaml": gateway,
        }})  # fmt: skip
        out(f"(the gateway reloaded in {took:.1f}s, no restart: a new listener 0.0.0.0_8443)")
        _tls_request(w, out, HTTPBIN_HOST, "/status/418", "418", ca.crt)
        _tls_request(w, out, HELLO_HOST, "/hello", "200", ca.crt)
    finally:
        w.forget(str(d))
    out(f"$ rm -r {d}")


# -- 11 ------------------------------------------------------------------------------------

TO_EGRESS = "outbound|80|httpbin|istio-egressgateway.istio-system.svc.cluster.local"


def egress_gateway(w: World, out: Out) -> None:
    r = w.egress.run([sys.executable, "-m", "pysidecar", "proxy-config", "listeners"], timeout=20)
    _shell("pysidecar proxy-config listeners   # in the egress gateway pod: running, no Gateway yet", out,
           r.stdout or r.stderr)  # fmt: skip
    out("$ rm httpbin-vs.yaml   # kubectl delete virtualservice httpbin-ext (the 3 s timeout of step 5)")
    _show_file(out, "egress-gateway.yaml", configs.EGRESS_GATEWAY_SEED, "client", "egress")
    out("(with step 4's ServiceEntry httpbin-se.yaml, which istiod sends the egress gateway too)")
    seed = configs.EGRESS_GATEWAY_SEED
    took = w.reload_many({
        "client": {"egress-gateway.yaml": seed, "httpbin-vs.yaml": None},
        "egress": {"httpbin-se.yaml": configs.SE_HTTPBIN, "egress-gateway.yaml": seed},
    })  # fmt: skip
    out(f"(both proxies reloaded in {took:.1f}s, no restart)")

    def origin(body: str) -> str | None:
        try:
            found = json.loads(body).get("origin")
        except ValueError:
            return None
        return found if isinstance(found, str) else None

    code, body = _settle(
        lambda: w.status(w.client, "http://httpbin.org/ip"), lambda r: origin(r[1]) == w.egress.ip, RELOAD_TIMEOUT
    )
    _shell("curl http://httpbin.org/ip   # in the client pod", out, body)
    expect(code == "200", f"200 from httpbin.org, got {code} {body[:200]!r}")
    expect(origin(body) == w.egress.ip, f"httpbin.org to see the egress gateway {w.egress.ip}, got {origin(body)!r}")
    code, body = w.status(w.client, "http://httpbin.org/headers")
    try:
        forwarded = json.loads(body)["headers"].get("X-Forwarded-For")
    except (ValueError, KeyError):
        forwarded = None
    _shell("curl -s http://httpbin.org/headers | grep X-Forwarded-For", out, f'"X-Forwarded-For": "{forwarded}"')
    expect(code == "200" and forwarded == w.client.ip, f"the gateway to add the client {w.client.ip}, got {forwarded!r}")
    status, _ = _head(w, "client", "http://edition.cnn.com/")
    _shell("curl -I http://edition.cnn.com/   # REGISTRY_ONLY still: no ServiceEntry, no gateway", out, status)
    expect(status == "HTTP/1.1 502 Bad Gateway", f"edition.cnn.com still 502, got {status!r}")


STEPS: list[Step] = [
    Step(
        "The interception rules",
        "`pysidecar init` (the init container's job) installed Istio's nat rules: outbound TCP "
        "goes to 15001, inbound to 15006; the proxy's own uid 1337 is exempt.",
        rules,
    ),
    Step(
        "ALLOW_ANY: unknown hosts pass through (seed 000)",
        "The mesh config says ALLOW_ANY. httpbin.org and edition.cnn.com are not in the registry, "
        "so the sidecar forwards to the original destination: PassthroughCluster (HTTP on port 80 "
        "through the `allow_any` route, other TCP through virtualOutbound's catch-all).",
        allow_any,
        counters=(r"^cluster\.PassthroughCluster\.upstream_(cx|rq)_total$",),
        log_lines=(("client", 3),),
    ),
    Step(
        "REGISTRY_ONLY: 502 for HTTP, closed for TCP (seed 000)",
        "Switch the mesh config's outboundTrafficPolicy to REGISTRY_ONLY by rewriting mesh.yaml "
        "in the sidecar's config directory (hot reload). Unknown HTTP hosts now hit the "
        "`block_all` virtual host (502); other TCP goes to BlackHoleCluster.",
        registry_only,
        counters=(
            r"^listener_manager\.lds\.update_success$",
            r"\.rq_direct_response$",
            r"^cluster\.BlackHoleCluster\.upstream_cx_none_healthy$",
        ),
        log_lines=(("client", 2),),
    ),
    Step(
        "A ServiceEntry registers httpbin.org, hot (seed 000)",
        "Add the seed's ServiceEntry as a new file: no restart. httpbin.org gets a virtual host on "
        "route 80 and the cluster outbound|80||httpbin.org; the sidecar adds its request headers "
        "(the seed also shows X-B3-* trace headers: pysidecar does no tracing, so none here). "
        "edition.cnn.com is still unknown.",
        service_entry,
        counters=(
            r"^listener_manager\.lds\.update_success$",
            r"^cluster\.outbound\|80\|\|httpbin\.org\.upstream_rq_(total|200)$",
            r"\.rq_direct_response$",
        ),
        log_lines=(("client", 2),),
    ),
    Step(
        "VirtualService timeout 3s → 504 (seed 000)",
        "The seed's VirtualService gives httpbin.org's route a 3 s timeout; /delay/5 answers after "
        "5 s, so the sidecar answers 504 `upstream request timeout` after 3 s.",
        timeout,
        counters=(
            r"^listener_manager\.lds\.update_success$",
            r"^cluster\.outbound\|80\|\|httpbin\.org\.upstream_rq_timeout$",
        ),
        log_lines=(("client", 2),),
    ),
    Step(
        "The 6:4 weighted split (seed 002)",
        "Seed 002 splits traffic between nginx v2 and v1 6:4 with weighted_clusters; in Istio's "
        "terms that is a VirtualService with weights 60/40 over two DestinationRule subsets.",
        split,
        counters=(
            r"^listener_manager\.lds\.update_success$",
            r"^cluster\.outbound\|80\|v[12]\|myngx\.example\.upstream_rq_total$",
        ),
        log_lines=(("client", SPLIT_REQUESTS),),
    ),
    Step(
        "Inbound interception adds a response header (seed 002)",
        "A pod without a sidecar (nettool) calls into intercepted pods. Istio YAML cannot add a "
        "response header on the inbound path with this compiler (istiod would need an "
        "EnvoyFilter; inbound traffic is passed through as is), so part b runs seed 002's own "
        "inbound Envoy config (response_headers_to_add myname: chengzw) in a second proxy, in "
        "pod myapp.",
        inbound,
        counters=(
            r"^cluster\.InboundPassthroughClusterIpv4\.upstream_cx_total$",
            r"^cluster\.myapp_local\.upstream_rq_total$",
        ),
        proxies=("client", "myapp"),
        log_lines=(("client", 1), ("myapp", 1)),
    ),
    Step(
        "The listener table, as `istioctl proxy-config listeners` prints it (seed 002)",
        "What the client's sidecar runs now: virtualOutbound 15001, virtualInbound 15006, the "
        "sniffed 0.0.0.0_80 (HTTP → route 80, else BlackHoleCluster), and route 80's virtual "
        "hosts.",
        listeners,
        proxies=(),
    ),
    Step(
        "Ingress gateway: host and path routing (seed 001)",
        "Pod `ingress` runs pysidecar in router mode (Istio's istio-ingressgateway, its Service maps "
        "80 to targetPort 8080). The seed's Gateway and VirtualService for httpbin.example.com arrive "
        "hot: /status and /delay go to httpbin:8000, any other path is Envoy's 404 (route not found).",
        ingress_routing,
        counters=(
            r"^listener_manager\.lds\.update_success$",
            r"^cluster\.outbound\|8000\|\|httpbin\.default\.svc\.cluster\.local\.upstream_rq_200$",
            r"^http\.outbound_0\.0\.0\.0_8080\.downstream_rq_[24]xx$",
        ),
        proxies=("ingress",),
        log_lines=(("ingress", 2),),
    ),
    Step(
        "Ingress gateway: SIMPLE TLS, the certificate chosen by SNI (seed 001)",
        "The seed's openssl commands (plus a subjectAltName, which curl checks) make a root CA and "
        "a certificate per host, in a temporary directory; the Secrets "
        "(credentialName) and an HTTPS Gateway with two SIMPLE servers arrive hot. The gateway "
        "terminates TLS on 8443 with the certificate of the server the client's SNI names.",
        ingress_tls,
        counters=(
            r"^listener_manager\.lds\.update_success$",
            r"^listener\.0\.0\.0\.0_8443\.ssl\.handshake$",
            r"^cluster\.outbound\|(8000\|\|httpbin|5000\|\|helloworld-v1)\.default\.svc\.cluster\.local\.upstream_rq_total$",
        ),
        proxies=("ingress",),
        log_lines=(("ingress", 2),),
    ),
    Step(
        "Egress gateway: httpbin.org through istio-egressgateway (seed 000)",
        "Pod `egress` runs pysidecar in router mode (istio=egressgateway). The seed's Gateway, "
        "VirtualService (bound to the gateway and to `mesh`, each route matching by `gateways`) and "
        "DestinationRule go to both proxies: the client's sidecar (still REGISTRY_ONLY) sends "
        "httpbin.org to the gateway's subset cluster, the gateway on to httpbin.org, and logs it "
        "as the seed's gateway log shows (HTTP/1.1 here: the seed's sidecar speaks mTLS h2).",
        egress_gateway,
        counters=(
            r"^listener_manager\.lds\.update_success$",
            r"^cluster\.outbound\|80\|httpbin\|istio-egressgateway\.istio-system\.svc\.cluster\.local\.upstream_rq_(total|200)$",
            r"^cluster\.outbound\|80\|\|httpbin\.org\.upstream_rq_(total|200)$",
            r"\.rq_direct_response$",
        ),
        proxies=("client", "egress"),
        log_lines=(("client", 3), ("egress", 2)),
    ),
    Step(
        "Mutual TLS between sidecars: PERMISSIVE accepts both",
        "Pods sleep and web get sidecars with their own SPIFFE identities. sleep's outbound cluster "
        "for web uses Istio's auto mTLS (web's pod is labelled security.istio.io/tlsMode: istio): "
        "SNI outbound_.80_._.web.default.svc.cluster.local, ALPN istio-http/1.1, web's SAN checked. "
        "web's inbound is PERMISSIVE (the default): mTLS chains beside the plaintext ones.",
        mesh_security.setup,
        proxies=(),
    ),
    Step(
        "PeerAuthentication STRICT: plaintext refused, the meshed client works",
        "A mesh-wide PeerAuthentication in istio-system makes web's inbound STRICT: a client "
        "without a sidecar finds no filter chain (closed), sleep's mutual TLS goes on.",
        mesh_security.strict,
        counters=(r"^listener\.0\.0\.0\.0_15006\.(ssl\.handshake|no_filter_chain_match)$",),
        proxies=("web",),
        log_lines=(("web", 1),),
    ),
    Step(
        "The caller's identity: x-forwarded-client-cert, metrics, access log",
        "web's inbound HCM appends the client certificate to x-forwarded-client-cert (Istio's "
        "APPEND_FORWARD); Istio's metrics carry source_principal / destination_principal and "
        "connection_security_policy mutual_tls; the access log %DOWNSTREAM_PEER_URI_SAN%.",
        mesh_security.identity,
        proxies=("web", "sleep"),
        log_lines=(("web", 1), ("sleep", 1)),
    ),
    Step(
        "AuthorizationPolicy: GET /headers from sleep denied, /ip allowed",
        "A DENY AuthorizationPolicy for sleep's principal, GET and /headers becomes an Envoy RBAC "
        "filter before web's router: 403 `RBAC: access denied` for /headers, /ip still 200.",
        mesh_security.authorization,
        counters=(r"^http\.inbound_0\.0\.0\.0_8080\.rbac\.(allowed|denied)$",),
        proxies=("web",),
        log_lines=(("web", 2),),
    ),
]
