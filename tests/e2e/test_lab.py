"""The lab itself: pods reach each other by address and by lab hostname, the lab servers are
byte exact, and closing (or cleaning up after a crash) leaves nothing behind."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from pysidecar.lab import Lab, LabError, Pod, cleanup_stale, registry
from pysidecar.lab.netns import list_namespaces, namespace_pids
from pysidecar.lab.servers import source_bytes

pytestmark = pytest.mark.e2e

MiB = 1024 * 1024


def root_links() -> str:
    return subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout


def exchange(sock: socket.socket, payload: bytes, chunk: int = 65536) -> bytes:
    """Send `payload` then half-close, while reading everything back on this thread."""

    def send() -> None:
        for i in range(0, len(payload), chunk):
            sock.sendall(payload[i : i + chunk])
        sock.shutdown(socket.SHUT_WR)

    t = threading.Thread(target=send)
    t.start()
    got = bytearray()
    while data := sock.recv(262144):
        got += data
    t.join()
    return bytes(got)


def connect(pod: Pod, host: str, port: int) -> socket.socket:
    with pod.netns():
        return socket.create_connection((host, port), timeout=10)


# -- topology --------------------------------------------------------------------------


def test_pods_reach_each_other_by_address_and_name(lab: Lab) -> None:
    app = lab.add_pod("app")
    ext = lab.add_pod("ext", hostnames=["httpbin.org", "edition.cnn.com"], address="198.19.0.10")
    late = lab.add_pod("late")  # added after ext: still sees ext's names, and ext sees it
    assert (app.ip, ext.ip, late.ip) == ("198.18.0.1", "198.19.0.10", "198.18.0.3")
    assert app.ns == f"{lab.prefix}-app" and app.name == "app" and app.ip6 is None

    ext.spawn_server("http", 80, "--name", "ext")
    late.spawn_server("http", 8080, "--name", "late")
    for pod in (app, late):
        for url in (
            "http://198.19.0.10/",
            "http://httpbin.org/",
            "http://edition.cnn.com/",
            "http://ext/",
        ):
            r = pod.run(["curl", "-sS", "-m", "5", url])
            assert (r.returncode, r.stdout) == (0, "hello from ext\n"), (pod.name, url, r.stderr)
    r = ext.run(["curl", "-sS", "-m", "5", "http://late:8080/ip"])
    assert json.loads(r.stdout)["origin"] == ext.ip, r.stderr

    # no way out: the only route is on-link, and a name outside the lab does not resolve
    assert app.run(["ip", "route"]).stdout.split()[0] == "198.18.0.0/15"
    assert app.run(["ip", "route", "get", "1.1.1.1"]).returncode != 0
    assert app.run(["curl", "-sS", "-m", "3", "http://example.com/"]).returncode != 0


def test_ipv6_pods(lab: Lab) -> None:
    a = lab.add_pod("a", ipv6=True)
    b = lab.add_pod("b", ipv6=True)
    assert (a.ip6, b.ip6) == ("2001:2::1", "2001:2::2")
    b.spawn_server("echo", 7)
    with connect(a, b.ip6, 7) as s:  # nodad: usable at once
        assert exchange(s, b"over v6") == b"over v6"
        assert s.getsockname()[0] == a.ip6


def test_netns_context_keeps_socket_in_pod(lab: Lab) -> None:
    app = lab.add_pod("app")
    ext = lab.add_pod("ext")
    ext.spawn_server("http", 80)
    s = connect(app, ext.ip, 80)
    # We are back in the root namespace, yet the socket still lives in app's netns.
    assert app.ip not in subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True).stdout
    with s:
        s.sendall(b"GET /ip HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        reply = b""
        while data := s.recv(65536):
            reply += data
    assert json.loads(reply.split(b"\r\n\r\n", 1)[1])["origin"] == app.ip


def test_wait_port_times_out_and_run_as_user(lab: Lab) -> None:
    app = lab.add_pod("app")
    with pytest.raises(TimeoutError, match=r"app.*4242"):
        app.wait_port(4242, timeout=0.2)
    assert app.run(["id", "-u"], user=1337).stdout.strip() == "1337"
    p = app.spawn(["false"])
    with pytest.raises(LabError, match="exited"):
        app.wait_port(4242, timeout=5, proc=p)


def test_spawn_proxy_runs_as_1337_with_only_dac_read_search(lab: Lab) -> None:
    app = lab.add_pod("app")
    # Stand-in for the proxy: pysidecar's own CLI is not ours to test; use a sleeping python.
    p = app.spawn(
        [sys.executable, "-c", "import time; time.sleep(60)"], user=1337, caps=["dac_read_search"]
    )
    deadline = time.monotonic() + 10
    while True:  # `ip netns exec` and `setpriv` exec in turn before python runs
        with open(f"/proc/{p.pid}/status") as f:
            fields = dict(line.split(":\t", 1) for line in f.read().splitlines() if ":\t" in line)
        if fields["Name"].strip().startswith("python") or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert fields["Uid"].split()[0] == "1337" and fields["Gid"].split()[0] == "1337"
    assert int(fields["CapAmb"], 16) == 1 << 2  # CAP_DAC_READ_SEARCH
    assert int(fields["CapEff"], 16) == 1 << 2


# -- servers ---------------------------------------------------------------------------


def test_echo_is_byte_exact_with_half_close(lab: Lab) -> None:
    app, ext = lab.add_pod("app"), lab.add_pod("ext")
    ext.spawn_server("echo", 7)
    payload = os.urandom(MiB)
    with connect(app, ext.ip, 7) as s:
        assert exchange(s, payload) == payload
    with connect(app, ext.ip, 7) as s:  # nothing sent: EOF answered with EOF
        assert exchange(s, b"") == b""


def test_sink_counts_and_hashes(lab: Lab) -> None:
    app, ext = lab.add_pod("app"), lab.add_pod("ext")
    ext.spawn_server("sink", 9)
    payload = os.urandom(3 * MiB + 7)
    with connect(app, ext.ip, 9) as s:
        reply = exchange(s, payload)
    assert reply == f"{len(payload)} {hashlib.sha256(payload).hexdigest()}\n".encode()


@pytest.mark.parametrize("n", [0, 1, 65521, 5 * MiB + 3])
def test_source_sends_n_deterministic_bytes(lab: Lab, n: int) -> None:
    app, ext = lab.add_pod("app"), lab.add_pod("ext")
    ext.spawn_server("source", 19, "--bytes", str(n))
    with connect(app, ext.ip, 19) as s:
        got = exchange(s, b"")
    assert len(got) == n and got == source_bytes(n)
    assert source_bytes(n) != source_bytes(n + 1)[:n] or n == 0  # seeded by n


def test_http_endpoints(lab: Lab) -> None:
    app = lab.add_pod("app")
    lab.add_pod("ext", hostnames=["httpbin.org"]).spawn_server(
        "http", 80, "--name", "bin", "--body", "custom body\n"
    )

    def curl(*args: str) -> str:
        r = app.run(["curl", "-sS", "-m", "10", *args])
        assert r.returncode == 0, r.stderr
        return r.stdout

    assert curl("http://httpbin.org/") == "custom body\n"
    assert curl("-o", "/dev/null", "-w", "%{http_code}", "http://httpbin.org/status/418") == "418"
    assert curl("-o", "/dev/null", "-w", "%{http_code}", "http://httpbin.org/nope") == "404"
    assert json.loads(curl("http://httpbin.org/delay/0.2"))["delay"] == 0.2
    headers = json.loads(
        curl("-H", "X-Test: one", "-H", "x-test: two", "http://httpbin.org/headers")
    )
    assert headers["headers"]["X-Test"] == "one,two" and headers["headers"]["Host"] == "httpbin.org"
    assert json.loads(curl("http://httpbin.org/ip"))["origin"] == app.ip
    head = curl("-sI", "http://httpbin.org/bytes/100")
    assert "x-served-by: bin" in head and "content-length: 100" in head

    r = app.run(["curl", "-sS", "-m", "10", "http://httpbin.org/bytes/70000"])
    # run() decodes with surrogateescape, so binary output round-trips exactly
    assert r.stdout.encode("utf-8", "surrogateescape") == source_bytes(70000)
    assert (
        app.run(
            ["sh", "-c", "curl -s http://httpbin.org/bytes/1000000 | sha256sum"]
        ).stdout.split()[0]
        == hashlib.sha256(source_bytes(1000000)).hexdigest()
    )

    body = os.urandom(300000)
    path = os.path.join(lab.logdir, "body.bin")
    with open(path, "wb") as f:
        f.write(body)
    for extra in ([], ["-H", "Transfer-Encoding: chunked"]):  # Expect: 100-continue, chunked
        got = json.loads(curl("--data-binary", f"@{path}", *extra, "http://httpbin.org/anything/x"))
        assert (got["method"], got["path"], got["body_length"]) == (
            "POST",
            "/anything/x",
            len(body),
        )
        assert got["body_sha256"] == hashlib.sha256(body).hexdigest()

    # keep-alive: several requests on one connection, pipelined
    with connect(app, lab.pods["ext"].ip, 80) as s:
        s.sendall(
            b"GET /status/204 HTTP/1.1\r\nhost: a\r\n\r\nGET /bytes/5 HTTP/1.1\r\nhost: a\r\n\r\n"
            b"GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n"
        )
        reply = exchange(s, b"")
    assert reply.count(b"HTTP/1.1 ") == 3
    assert reply.startswith(b"HTTP/1.1 204 No Content\r\n")
    assert reply.endswith(b"\r\n\r\ncustom body\n")
    assert source_bytes(5) in reply


# -- teardown --------------------------------------------------------------------------


def test_close_leaves_nothing_behind() -> None:
    before_links = root_links()
    lab = Lab()
    prefix = lab.prefix
    try:
        a = lab.add_pod("app", ipv6=True)
        b = lab.add_pod("ext", hostnames=["httpbin.org"])
        servers = [b.spawn_server("echo", 7), b.spawn_server("http", 80)]
        # a process outside the tracked group, still inside the pod: found by namespace pid
        a.run(["sh", "-c", "setsid sleep 300 >/dev/null 2>&1 < /dev/null &"])
        stray = namespace_pids(a.ns)
        assert stray
        assert {a.ns, b.ns, lab.switch_ns} <= set(list_namespaces())
        assert os.path.isdir(f"/etc/netns/{a.ns}") and os.path.isdir(lab.logdir)
        assert root_links() == before_links  # nothing of the lab is visible in the root ns
    finally:
        lab.close()
    lab.close()  # idempotent
    assert not [ns for ns in list_namespaces() if ns.startswith(prefix)]
    assert not [d for d in os.listdir("/etc/netns") if d.startswith(prefix)]
    assert not os.path.exists(lab.logdir) and not os.path.exists(registry.marker_dir(prefix))
    for p in servers:
        assert p.returncode is not None
    for pid in stray:
        assert not os.path.exists(f"/proc/{pid}")
    assert root_links() == before_links


def test_failure_midway_cleans_up() -> None:
    lab = Lab()
    try:
        lab.add_pod("app")
        with pytest.raises(ValueError):
            lab.add_pod("bad", address="10.0.0.1")  # outside the lab range: refused
        with pytest.raises(ValueError):
            lab.add_pod("app")
    finally:
        lab.close()
    assert not [ns for ns in list_namespaces() if ns.startswith(lab.prefix)]


def test_cleanup_stale_removes_dead_owners_only(lab: Lab) -> None:
    # A "crashed" lab: created by a child process that exits without closing it.
    code = (
        "from pysidecar.lab import Lab\n"
        "lab = Lab(); p = lab.add_pod('app', hostnames=['x.test']); lab.add_pod('ext')\n"
        "p.spawn(['sleep', '300'])\n"
        "lab.detach(); print(lab.prefix)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    dead = r.stdout.strip()
    # detach() marks nothing persistent; the marker still names the (now dead) creator.
    assert registry.read_owner(dead) is not None and not registry.read_owner(dead).alive()  # type: ignore[union-attr]
    leftover = namespace_pids(f"{dead}-app")
    assert leftover and f"{dead}-app" in list_namespaces()

    lab.add_pod("alive")  # our own live lab must survive
    removed = cleanup_stale()
    assert dead in removed and lab.prefix not in removed
    assert not [ns for ns in list_namespaces() if ns.startswith(dead)]
    assert not [d for d in os.listdir("/etc/netns") if d.startswith(dead)]
    assert not os.path.exists(registry.marker_dir(dead))
    assert not any(os.path.exists(f"/proc/{pid}") for pid in leftover)
    assert f"{lab.prefix}-alive" in list_namespaces()


def test_cleanup_stale_with_fake_dead_pid_marker() -> None:
    """A marker naming a pid that has exited, plus a namespace and etc dir by that lab's name."""
    child = subprocess.Popen(["true"])
    child.wait()  # its pid is now dead (and start time unknowable: None means "any")
    labid = f"psc{os.urandom(2).hex()}x"
    os.makedirs(registry.marker_dir(labid))
    with open(os.path.join(registry.marker_dir(labid), registry.OWNER_FILE), "w") as f:
        json.dump({"labid": labid, "pid": child.pid, "start_time": None, "tmpdir": None}, f)
    subprocess.run(["ip", "netns", "add", f"{labid}-app"], check=True)
    os.makedirs(f"/etc/netns/{labid}-app", exist_ok=True)
    try:
        assert labid in cleanup_stale()
    finally:
        registry.destroy(labid)
    assert f"{labid}-app" not in list_namespaces()
    assert not os.path.exists(f"/etc/netns/{labid}-app")
    assert not os.path.exists(registry.marker_dir(labid))


# -- sidecar glue ----------------------------------------------------------------------


def test_install_interception_failure_carries_stderr(lab: Lab) -> None:
    app = lab.add_pod("app")
    with pytest.raises(LabError, match=r"pysidecar init .*exited"):
        app.install_interception(["-m", "NOT-A-MODE"])


def test_proxy_captures_pod_traffic(lab: Lab) -> None:
    app = lab.add_pod("app")
    ext = lab.add_pod("ext", hostnames=["httpbin.org"])
    ext.spawn_server("http", 80, "--name", "ext")
    app.install_interception()
    proxy = app.spawn_proxy(["run", "--concurrency", "1"])
    app.wait_port(15001, timeout=20, proc=proxy)
    r = app.run(["curl", "-sS", "-m", "10", "http://httpbin.org/"])
    assert (r.returncode, r.stdout) == (0, "hello from ext\n"), (r.stderr, lab.logs())
    nat = app.run(["iptables", "-t", "nat", "-L", "ISTIO_REDIRECT", "-v", "-n", "-x"]).stdout
    packets = int(nat.splitlines()[2].split()[0])
    assert packets >= 1, nat  # the connection went through 15001, not around the sidecar


def test_demo_cli_up_list_shell_down(capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from pysidecar.lab import cli, demo

    if demo.state() is not None or os.path.exists(registry.marker_dir(demo.DEMO_ID)):
        pytest.skip("a demo lab is up on this machine; not touching it")
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    try:
        assert cli.main(parser.parse_args(["up", "--no-proxy"])) == 0
        out = capsys.readouterr().out
        assert "httpbin.org" in out and "198.18.0.1" in out
        r = subprocess.run(
            [sys.executable, "-c", "from pysidecar.lab import cli; import argparse; "
             "p = argparse.ArgumentParser(); cli.add_arguments(p); "
             "cli.main(p.parse_args(['shell', 'client', '--', 'curl', '-sS', '-m', '5', "
             "'http://edition.cnn.com/']))"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert r.stdout == "hello from edition.cnn.com\n", r.stderr
        assert cli.main(parser.parse_args(["up", "--no-proxy"])) == 1  # refuses a second demo
    finally:
        assert cli.main(parser.parse_args(["down"])) == 0
    assert not [ns for ns in list_namespaces() if ns.startswith(demo.DEMO_ID)]
    assert demo.state() is None
