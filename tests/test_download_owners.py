"""Download leases in a real Redis (ollama_client/download_owners.py), and what a process does
with the leases of the others: the sweep that ends a pull whose owner died, and a cancel asked of
another process. The processes here are objects in this one; tests/test_fleet_live.py runs them
as real processes."""
import time

import pytest

import ollama_client.downloads as downloads_module
from errors import ApiError, NotFoundError
from fleet.link import RedisLink
from ollama_client.client import OllamaClient
from ollama_client.download_owners import CANCEL_ASKED, LOST, RENEWED, DownloadOwners
from ollama_client.downloads import ORPHANED_MESSAGE, DownloadManager
from ollama_client.history import DownloadHistory
from tests.live import free_port, wait_until

KEY = "registry.ollama.ai/library/big:70b"
NODE = "gpu-box"
SHORT_TTL_S = 0.3


@pytest.fixture
def link(redis_url):
    link = RedisLink(redis_url)
    yield link
    link.close()


@pytest.fixture
def dead_link():
    """A RedisLink to a port nothing listens on."""
    link = RedisLink(f"redis://127.0.0.1:{free_port()}/0")
    yield link
    link.close()


def state(percent=0.0, completed=0, total=0, model="big:70b", started_at="2026-12-02T10:00:00.000+00:00"):
    return {"model_name": model, "status": "downloading", "progress": f"{percent:.1f}%", "percent": percent,
            "completed_bytes": completed, "total_bytes": total, "started_at": started_at, "finished_at": None,
            "error": None, "message": f"pulling {model}"}


# -- the leases --------------------------------------------------------------------------------------

def test_one_process_of_a_node_holds_a_models_lease(link):
    a, b, elsewhere = DownloadOwners(link, NODE), DownloadOwners(link, NODE), DownloadOwners(link, "other-box")
    assert a.claim(KEY, state()) is True
    assert a.claim(KEY, state()) is True  # its own lease, again
    assert b.claim(KEY, state()) is False
    assert elsewhere.claim(KEY, state()) is True  # another node pulls from its own Ollama
    assert b.lease(KEY).owner == a.owner_id
    assert [lease.owner for lease in b.held_elsewhere()] == [a.owner_id]
    assert a.held_elsewhere() == []
    b.release(KEY)  # not b's to release
    assert b.claim(KEY, state()) is False
    a.release(KEY)
    assert b.lease(KEY) is None and b.claim(KEY, state()) is True


def test_the_owners_renewals_carry_its_state_and_history_row(link):
    a, b = DownloadOwners(link, NODE), DownloadOwners(link, NODE)
    a.claim(KEY, state())
    assert a.renew(KEY, state(42.0, 420, 1000), 7) == RENEWED
    [lease] = b.held_elsewhere()
    assert (lease.model_key, lease.record_id, lease.state, lease.cancel_asked) == (KEY, 7, state(42.0, 420, 1000),
                                                                                 False)


def test_a_lease_not_renewed_expires_and_its_late_owner_hears_it_lost(link):
    a, b = DownloadOwners(link, NODE, ttl_s=SHORT_TTL_S), DownloadOwners(link, NODE)
    a.claim(KEY, state())
    time.sleep(SHORT_TTL_S + 0.1)
    assert b.lease(KEY) is None
    assert b.claim(KEY, state()) is True
    assert a.renew(KEY, state(), None) == LOST
    assert b.lease(KEY).owner == b.owner_id  # the late renewal took nothing


def test_a_renewal_takes_back_a_lease_redis_forgot(link, redis_server):
    a = DownloadOwners(link, NODE)
    a.claim(KEY, state())
    with redis_server.client() as client:
        client.flushall()  # as after a restart of Redis without persistence
    assert a.renew(KEY, state(10.0, 100, 1000), 3) == RENEWED
    assert a.lease(KEY).owner == a.owner_id and a.lease(KEY).record_id == 3


def test_a_cancel_is_asked_through_the_lease(link):
    a, b = DownloadOwners(link, NODE), DownloadOwners(link, NODE)
    assert b.request_cancel(KEY) is None  # nobody holds one
    a.claim(KEY, state())
    a.renew(KEY, state(), 5)
    asked = b.request_cancel(KEY)
    assert (asked.owner, asked.record_id) == (a.owner_id, 5)
    assert a.renew(KEY, state(), 5) == CANCEL_ASKED
    a.release(KEY)
    a.claim(KEY, state())  # a new pull of the model starts without the old request
    assert a.renew(KEY, state(), 6) == RENEWED


def test_without_redis_every_process_owns_its_downloads_and_nobody_knows_more(dead_link):
    owners = DownloadOwners(dead_link, NODE)
    assert owners.claim(KEY, state()) is True
    assert owners.renew(KEY, state(), 1) is None
    assert owners.lease(KEY) is None and owners.leases([KEY]) is None
    assert owners.held_elsewhere() is None and owners.request_cancel(KEY) is None
    owners.release(KEY)


# -- another process's downloads ---------------------------------------------------------------------

class Published(list):
    def __call__(self, event, payload):
        self.append((event, payload))


def orphan_of(owners, history, percent=20.0, completed=200, total=1000):
    """A download whose owner wrote its lease once, with progress, and then stopped (died)."""
    record_id = history.start("big:70b", time.time(), model_key=KEY, owner=owners.owner_id)
    owners.claim(KEY, state())
    owners.renew(KEY, state(percent, completed, total), record_id)
    return record_id


@pytest.fixture
def node(link, database, fake_ollama):
    """make(): one more process of the node: a DownloadManager, its published events, its owners."""
    made = []

    def make(link=link, node_name=NODE, **owner_options):
        published = Published()
        owners = DownloadOwners(link, node_name, **owner_options)
        client = OllamaClient(fake_ollama.url)
        manager = DownloadManager(client, published, history=DownloadHistory(database, node_name), owners=owners)
        made.append((manager, client))
        return manager, published, owners

    yield make
    for manager, client in made:
        manager.shutdown()
        client.close()


def test_scenario_owner_dies_mid_pull_another_process_ends_it_once(node, database):
    _, _, dead = node(ttl_s=SHORT_TTL_S)
    b, published, _ = node()
    c, published_c, _ = node()
    history = DownloadHistory(database, NODE)
    record_id = orphan_of(dead, history)
    assert b.sweep() == 0  # its lease is live: it is running
    assert [d["status"] for d in b.list()] == ["downloading"]
    time.sleep(SHORT_TTL_S + 0.1)
    assert b.list() == []  # no owner: not listed as running any more
    assert b.sweep() == 0 and c.sweep() == 0  # gone once: maybe a late renewal
    assert b.sweep() == 1
    assert c.sweep() == 0 and b.sweep() == 0  # ended once, by one process
    row = history.get(record_id)
    assert (row["status"], row["error"], row["percent"], row["completed_bytes"]) == ("error", ORPHANED_MESSAGE,
                                                                                      20.0, 200)
    assert row["finished_at"] is not None
    assert published == [("model_download_progress", {
        "model_name": "big:70b", "progress": "20.0%", "percent": 20.0, "status": "error", "completed_bytes": 200,
        "total_bytes": 1000, "message": ORPHANED_MESSAGE})]
    assert published_c == []
    [listed] = b.list()
    assert (listed["status"], listed["error"], listed["percent"]) == ("error", ORPHANED_MESSAGE, 20.0)


def test_a_sweep_leaves_other_nodes_alone_and_ends_rows_from_before_the_fleet(node, database):
    b, published, _ = node()
    DownloadHistory(database, "other-box").start("elsewhere", time.time(), model_key="x", owner="someone")
    legacy = DownloadHistory(database).start("legacy", time.time())  # no node, no owner
    assert b.sweep() == 0
    assert b.sweep() == 1
    assert DownloadHistory(database).get(legacy)["status"] == "error"
    assert [d["model_name"] for d in DownloadHistory(database).running()] == ["elsewhere"]
    assert [p["model_name"] for _, p in published] == ["legacy"]


def test_a_sweep_while_redis_is_away_ends_nothing(node, database, dead_link):
    b, published, _ = node(link=dead_link)
    DownloadHistory(database, NODE).start("big:70b", time.time(), model_key=KEY, owner="gone")
    assert b.sweep() == 0 and b.sweep() == 0
    assert published == []


def test_a_newer_pull_of_the_model_silences_the_orphans_final_event(node, database):
    _, _, dead = node(ttl_s=SHORT_TTL_S)
    b, published, live = node()
    history = DownloadHistory(database, NODE)
    record_id = orphan_of(dead, history)
    time.sleep(SHORT_TTL_S + 0.1)
    live.claim(KEY, state(started_at="2026-12-02T11:00:00.000+00:00"))  # a new pull of the same model
    assert b.sweep() == 0 and b.sweep() == 1
    assert history.get(record_id)["status"] == "error"
    assert published == []  # the running pull's own events tell the clients


def test_a_cancel_asked_of_a_process_that_died_ends_the_row_cancelled(node, database):
    _, _, dead = node(ttl_s=SHORT_TTL_S)
    b, published, _ = node()
    record_id = orphan_of(dead, DownloadHistory(database, NODE))
    started = time.monotonic()
    b.cancel(KEY)  # waits for the lease to expire
    assert time.monotonic() - started < 2
    assert DownloadHistory(database).get(record_id)["status"] == "cancelled"
    assert [(p["status"], p["percent"], p["message"]) for _, p in published] == [
        ("cancelled", 20.0, "Download cancelled")]
    with pytest.raises(NotFoundError):
        b.cancel(KEY)


def test_a_cancel_the_owner_does_not_answer_is_504(node, database, monkeypatch):
    _, _, deaf = node()  # holds its lease for the test's length, never reads the request
    b, _, _ = node()
    orphan_of(deaf, DownloadHistory(database, NODE))
    monkeypatch.setattr(downloads_module, "REMOTE_CANCEL_WAIT_S", 0.3)
    with pytest.raises(ApiError) as refused:
        b.cancel(KEY)
    assert refused.value.status == 504


def test_a_process_cancels_its_pull_when_another_asks(node, fake_ollama):
    fake_ollama.set_behaviour(pull={"layers": [1000], "lines_per_layer": 10, "hang_after_lines": 4})
    a, published_a, _ = node()
    b, published_b, _ = node()
    a.start(KEY, "big:70b")
    wait_until(lambda: [d["completed_bytes"] for d in b.list()] == [200], 5)
    assert b.is_running(KEY)
    b.cancel(KEY)
    assert [d["status"] for d in a.list()] == [d["status"] for d in b.list()] == ["cancelled"]
    wait_until(lambda: fake_ollama.cancelled_pulls() == ["big:70b"], 5)
    assert published_a[-1][1]["status"] == "cancelled" and published_b == []  # a tells every client
    assert not b.is_running(KEY)
    with pytest.raises(NotFoundError):
        b.cancel(KEY)


def test_a_process_that_starts_leaves_the_others_running_downloads_alone(node, database, link):
    history = DownloadHistory(database, NODE)
    running = DownloadOwners(link, NODE)
    record_id = orphan_of(running, history)  # its owner is alive: the lease is fresh
    b, _, _ = node()
    assert b.sweep() == 0 and b.sweep() == 0
    assert history.get(record_id)["status"] == "downloading"


def test_a_node_lists_its_own_downloads(node, database):
    b, _, _ = node()
    for node_name, model in (("other-box", "theirs"), (NODE, "ours")):
        other = DownloadHistory(database, node_name)
        record_id = other.start(model, time.time(), model_key=model, owner="x")
        other.finish(record_id, {**state(100.0, 10, 10, model=model), "status": "complete"}, time.time())
    assert [d["model_name"] for d in b.list()] == ["ours"]
