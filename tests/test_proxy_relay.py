"""The proxy's relay: chunks go on as they arrive, read and written by the request's own green thread."""
import contextlib
import logging

from errors import OllamaTimeoutError, OllamaUnavailableError
from ollama_client import proxy


class Client:
    """Stands in for OllamaClient's transport-error funnel (the chunks below raise our errors already)."""

    def transport_errors(self, timeout):
        return contextlib.nullcontext()


class Upstream:
    def __init__(self):
        self.closed = 0

    def close(self):
        self.closed += 1


def relay_of(chunks, first=b""):
    upstream = Upstream()
    return proxy._relay(Client(), (1.0, 1.0), upstream, first, iter(chunks)), upstream


def test_the_first_chunk_then_the_rest_in_order_then_upstream_is_closed():
    relay, upstream = relay_of([b"b\n", b"c\n"], first=b"a\n")
    assert list(relay) == [b"a\n", b"b\n", b"c\n"]
    assert upstream.closed == 1


def test_a_slow_client_slows_the_upstream_read():
    produced = []

    def fast():
        for index in range(20):
            produced.append(index)
            yield b"%02d" % index

    relay, _ = relay_of(fast())
    for taken, _chunk in enumerate(relay, start=1):
        # Nothing is read ahead of the client: the next read waits for this write.
        assert len(produced) == taken
    assert len(produced) == 20


def test_a_stall_or_a_break_ends_the_stream_cleanly(caplog):
    for error in (OllamaTimeoutError("Ollama at http://x did not answer within 1 s"),
                  OllamaUnavailableError("the connection broke mid-response")):
        def stalls():
            yield b"a\n"
            raise error

        relay, upstream = relay_of(stalls())
        with caplog.at_level(logging.WARNING, logger="ollama_client.proxy"):
            assert list(relay) == [b"a\n"]
        assert upstream.closed == 1 and "ended early" in caplog.text


def test_a_client_that_leaves_closes_the_upstream_request():
    finished = []

    def forever():
        try:
            yield b"a\n"
            yield b"never\n"
        finally:
            finished.append(True)

    relay, upstream = relay_of(forever())
    assert next(relay) == b"a\n"
    relay.close()  # what the server does when a write to the client fails
    assert upstream.closed == 1 and finished == [True]


def _no_read_after_the_end(chunks):
    """Chunks, then a read that fails the test: a relay that knows the length must not ask for more."""
    yield from chunks
    raise AssertionError("read past the declared length")


def test_a_body_of_known_length_ends_without_another_read():
    upstream = Upstream()
    relay = proxy._relay(Client(), (1.0, 1.0), upstream, b"ab", _no_read_after_the_end([b"cd", b"ef"]), length=6)
    assert b"".join(relay) == b"abcdef" and upstream.closed == 1

