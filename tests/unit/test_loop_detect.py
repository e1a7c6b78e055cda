"""forwarding_loop: which upstream addresses are the proxy's own listening sockets."""

from __future__ import annotations

from pysidecar.model import Listener, SocketAddress
from pysidecar.proxy.loop_detect import forwarding_loop, own_sockets


def test_own_sockets_are_the_bound_listeners_addresses() -> None:
    own = own_sockets([
        Listener("gw", SocketAddress("0.0.0.0", 8080), additional_addresses=(SocketAddress("::", 8080),)),
        Listener("0.0.0.0_80", SocketAddress("0.0.0.0", 80), bind_to_port=False),
        Listener("one", SocketAddress("127.0.0.1", 9000)),
    ])  # fmt: skip
    assert own == {SocketAddress("0.0.0.0", 8080), SocketAddress("::", 8080), SocketAddress("127.0.0.1", 9000)}


def test_loops_exact_wildcard_and_not() -> None:
    own = frozenset({SocketAddress("0.0.0.0", 8080), SocketAddress("127.0.0.1", 9000)})
    # A gateway's passthrough cluster: the original destination is where the client connected.
    assert forwarding_loop("198.18.0.5", 8080, own, "198.18.0.5") == SocketAddress("0.0.0.0", 8080)
    assert forwarding_loop("127.0.0.1", 8080, own, "198.18.0.5") == SocketAddress("0.0.0.0", 8080)
    assert forwarding_loop("127.0.0.1", 9000, own, "10.0.0.1") == SocketAddress("127.0.0.1", 9000)
    # Another host on our port, our address on another port, a DNS name: not ours.
    assert forwarding_loop("198.18.0.9", 8080, own, "198.18.0.5") is None
    assert forwarding_loop("198.18.0.5", 8081, own, "198.18.0.5") is None
    assert forwarding_loop("httpbin.org", 8080, own, "198.18.0.5") is None
    # A sidecar: the original destination of an intercepted connection is not its 15001.
    sidecar = own_sockets([Listener("virtualOutbound", SocketAddress("0.0.0.0", 15001))])
    assert forwarding_loop("10.0.0.7", 80, sidecar, "10.0.0.7") is None
