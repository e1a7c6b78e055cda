"""Listening sockets as Envoy's listener fields ask for them: real sockets, no mocks."""

from __future__ import annotations

import errno
import os
import socket

import pytest

from pysidecar.model import SocketAddress
from pysidecar.proxy.worker import IP_FREEBIND, bind_socket

NOT_LOCAL = SocketAddress("198.51.100.7", 0)  # TEST-NET-2: never an address of this machine


def test_freebind_binds_an_address_this_host_does_not_have() -> None:
    with pytest.raises(OSError) as err:
        bind_socket(NOT_LOCAL).close()
    assert err.value.errno == errno.EADDRNOTAVAIL
    sock = bind_socket(NOT_LOCAL, freebind=True)
    try:
        assert sock.getsockopt(socket.SOL_IP, IP_FREEBIND) == 1
        assert sock.getsockname()[0] == NOT_LOCAL.address
    finally:
        sock.close()


def test_transparent_sets_ip_transparent_or_names_the_capability() -> None:
    if os.geteuid() != 0:
        with pytest.raises(OSError, match="CAP_NET_ADMIN"):
            bind_socket(SocketAddress("127.0.0.1", 0), transparent=True)
        return
    sock = bind_socket(SocketAddress("127.0.0.1", 0), transparent=True)
    try:
        assert sock.getsockopt(socket.SOL_IP, socket.IP_TRANSPARENT) == 1
    finally:
        sock.close()
    plain = bind_socket(SocketAddress("127.0.0.1", 0))
    try:
        assert plain.getsockopt(socket.SOL_IP, socket.IP_TRANSPARENT) == 0
    finally:
        plain.close()
