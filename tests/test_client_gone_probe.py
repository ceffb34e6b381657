"""The HTTP server's "has the client hung up?" probe, on green sockets as the server hands them over."""
import socket

import eventlet.greenio

import concurrency
from server import _peer_closed


def test_the_probe_tells_an_open_peer_from_a_closed_one_without_blocking_or_reading():
    ours, theirs = socket.socketpair()
    assert isinstance(ours, eventlet.greenio.GreenSocket)  # tests/conftest.py monkey-patches, as app.py does
    with ours, theirs:
        ours.settimeout(5.0)
        started = concurrency.monotonic()
        assert not _peer_closed(ours)                      # open and silent: answers at once
        assert concurrency.monotonic() - started < 0.1
        theirs.sendall(b"GET / HTTP/1.1\r\n")              # a pipelined request is not a hang-up
        assert not _peer_closed(ours)
        assert ours.gettimeout() == 5.0                     # the server's timeout is left as it was
        assert ours.recv(100) == b"GET / HTTP/1.1\r\n"      # and the bytes are still there to read
        theirs.close()
        assert _peer_closed(ours)
