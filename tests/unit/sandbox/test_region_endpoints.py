"""The local-down fault tells the daemon's connections apart by their owner in /proc: the
client end's socket inode is found in the kernel's table, and a connection that is not a
daemon child's is never taken for one."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from orchestrator.sandbox.region_endpoints import _socket_inode, from_daemon, local_down_supported

pytestmark = pytest.mark.skipif(not local_down_supported(), reason="needs Linux /proc")


@pytest.fixture
def connection() -> Iterator[tuple[socket.socket, int]]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    client = socket.create_connection(server.getsockname())
    accepted, _ = server.accept()
    try:
        yield client, server.getsockname()[1]
    finally:
        for s in (client, accepted, server):
            s.close()


def test_the_client_end_of_a_loopback_connection_is_found_by_its_inode(
    connection: tuple[socket.socket, int],
) -> None:
    client, port = connection
    inode = _socket_inode(client.getsockname(), port)
    assert inode is not None
    assert os.readlink(f"/proc/self/fd/{client.fileno()}") == f"socket:[{inode}]"
    assert _socket_inode(("127.0.0.1", 1), port) is None  # no such connection


def test_a_connection_of_a_process_that_is_not_the_daemon_gets_an_answer(
    connection: tuple[socket.socket, int],
) -> None:
    client, port = connection
    assert from_daemon(client.getsockname(), port) is False  # this test is no daemon child
