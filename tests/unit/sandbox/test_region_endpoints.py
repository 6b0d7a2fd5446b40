"""The local-down fault tells the daemon's connections apart by their owner in /proc: the
client end's socket inode is asked of the kernel (sock_diag, or /proc/net/tcp where netlink
is refused), and a connection that is not a daemon child's is never taken for one."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from orchestrator.sandbox import region_endpoints
from orchestrator.sandbox.region_endpoints import (
    _inode_by_diag,
    _inode_by_table,
    _socket_inode,
    from_daemon,
    local_down_supported,
)

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


def test_sock_diag_and_the_proc_table_name_the_same_socket(
    connection: tuple[socket.socket, int],
) -> None:
    client, port = connection
    mine = os.readlink(f"/proc/self/fd/{client.fileno()}")
    client_port = client.getsockname()[1]
    assert f"socket:[{_inode_by_diag(client_port, port)}]" == mine
    assert f"socket:[{_inode_by_table(client_port, port)}]" == mine
    # The server's end of the same connection is another socket; a port nobody uses, none.
    assert f"socket:[{_inode_by_diag(port, client_port)}]" != mine
    assert _inode_by_diag(1, port) is None


def test_without_netlink_the_proc_table_answers(
    connection: tuple[socket.socket, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    def refused(client_port: int, server_port: int) -> str | None:
        raise PermissionError("netlink refused")

    monkeypatch.setattr(region_endpoints, "_inode_by_diag", refused)
    client, port = connection
    inode = _socket_inode(client.getsockname(), port)
    assert os.readlink(f"/proc/self/fd/{client.fileno()}") == f"socket:[{inode}]"
