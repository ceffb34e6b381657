"""The proxy's pump: what has arrived goes out in one write; slow clients and stalls are bounded."""
import contextlib

import pytest

import concurrency
from errors import OllamaTimeoutError
from ollama_client import proxy


class Client:
    """Stands in for OllamaClient's transport-error funnel (the chunks below raise our errors already)."""

    def transport_errors(self, timeout):
        return contextlib.nullcontext()


def pump_of(chunks):
    return proxy._Pump(Client(), (1.0, 1.0), iter(chunks) if isinstance(chunks, list) else chunks)


def test_chunks_that_arrive_together_leave_together():
    assert list(pump_of([b"a\n", b"b\n", b"c\n"]).batches()) == [b"a\nb\nc\n"]


def test_chunks_that_arrive_apart_leave_apart():
    def paced():
        for line in (b"a\n", b"b\n", b"c\n"):
            yield line
            concurrency.sleep(0.01)

    assert list(pump_of(paced()).batches()) == [b"a\n", b"b\n", b"c\n"]


def test_a_slow_client_bounds_what_is_held(monkeypatch):
    monkeypatch.setattr(proxy, "MAX_PENDING_BYTES", 8)
    produced = []

    def fast():
        for index in range(20):
            produced.append(index)
            yield b"%02d" % index

    pump = pump_of(fast())
    batches = []
    for batch in pump.batches():
        batches.append(batch)
        assert len(batch) <= 8
        concurrency.sleep(0.005)  # the client reads slowly...
        assert len(produced) - sum(len(b) for b in batches) // 2 <= 5  # ...so the pump waits for it
    assert b"".join(batches) == b"".join(b"%02d" % i for i in range(20))


def test_a_stall_ends_the_batches_and_keeps_the_error():
    def stalls():
        yield b"a\n"
        raise OllamaTimeoutError("Ollama at http://x did not answer within 1 s")

    pump = pump_of(stalls())
    assert list(pump.batches()) == [b"a\n"]
    assert isinstance(pump.error, OllamaTimeoutError)


def test_stop_ends_a_waiting_pump():
    finished = []

    def forever():
        try:
            yield b"a\n"
            concurrency.sleep(30)
            yield b"never\n"
        finally:
            finished.append(True)

    pump = pump_of(forever())
    batches = pump.batches()
    assert next(batches) == b"a\n"
    pump.stop()
    assert finished == [True]
    with pytest.raises(StopIteration):
        next(batches)
