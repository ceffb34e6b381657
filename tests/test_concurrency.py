"""concurrency.getaddrinfo: a host name is looked up in a real thread, the hub keeps running."""
import socket

import eventlet
import pytest

import concurrency

OsThread = eventlet.patcher.original("threading")
blocking_sleep = eventlet.patcher.original("time").sleep


@pytest.fixture
def slow_resolver(monkeypatch):
    """The C library's getaddrinfo, 0.3 s a name; records which OS thread asked."""
    asked = []

    def resolve(host, port, family=0, type=0, proto=0, flags=0):
        asked.append((host, OsThread.get_ident()))
        if host not in (None, "127.0.0.1", "::1"):
            blocking_sleep(0.3)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]

    monkeypatch.setattr(concurrency, "_blocking_getaddrinfo", resolve)
    monkeypatch.setattr(concurrency, "_hub_thread", OsThread.get_ident())
    return asked


def test_a_host_name_is_looked_up_in_a_real_thread_while_green_threads_run(slow_resolver):
    ticks = []

    def tick():
        while True:
            ticks.append(1)
            eventlet.sleep(0.01)

    ticker = eventlet.spawn(tick)
    try:
        answer = concurrency.getaddrinfo("ollama.example", 11434, type=socket.SOCK_STREAM)
    finally:
        ticker.kill()
    assert answer[0][4] == ("127.0.0.1", 11434)
    assert slow_resolver[0][0] == "ollama.example" and slow_resolver[0][1] != OsThread.get_ident()
    assert len(ticks) >= 10, "the hub waited for the lookup"


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", b"127.0.0.1", None])
def test_an_address_is_answered_without_a_thread(slow_resolver, host):
    concurrency.getaddrinfo(host, 80)
    assert slow_resolver == [(host, OsThread.get_ident())]


def test_from_a_real_thread_the_lookup_blocks_that_thread(slow_resolver):
    """A tpool worker or another OS thread asking cannot wait greenly: it asks the C library itself."""
    done = []
    worker = OsThread.Thread(target=lambda: done.append(concurrency.getaddrinfo("ollama.example", 1)))
    worker.start()
    worker.join(5)
    assert done and slow_resolver[0][1] == worker.ident

