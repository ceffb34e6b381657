"""One owner per model's download across the processes of a node: a lease in Redis with an expiry.

The process that starts a pull creates the hash `<prefix>:download-lease:<node>:<model>` (only if
no live owner holds it) with its own id, and renews it every few tenths of a second while the
pull runs, each time with the job's latest state (its `GET downloads` entry) and its row in the
download history. The process deletes the lease once the pull has ended and its final state is
written (only if it still holds it). Meanwhile the other processes of the node:

- join a second request for the model (their clients get the owner's `model_download_progress`
  events through the Socket.IO queue) and list the download from the lease's state;
- cancel it by setting the lease's `cancel` field, which the owner reads at its next renewal;
- see a lease vanish when its owner dies (it is not renewed for OWNER_TTL_S), and then mark
  the owner's row in the history interrupted (ollama_client/downloads.py's sweep).

The lease is per node: each GPU host has its own Ollama. Without Redis (or while it is away)
each process owns its own downloads, as before; every call here then answers None ("Redis
cannot say"), never raises.
"""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from fleet.link import RedisLink

OWNER_TTL_S = 5.0  # a lease not renewed for this long belongs to a dead (or stalled) process
RENEW_EVERY_S = 0.5  # and so how soon the owner sees a cancel asked for on another process

# ARGV: owner, ttl_ms, state. 1: this process holds the lease now; 0: another process does.
_CLAIM = """
local owner = redis.call('hget', KEYS[1], 'owner')
if owner and owner ~= ARGV[1] then return 0 end
redis.call('del', KEYS[1])
redis.call('hset', KEYS[1], 'owner', ARGV[1], 'state', ARGV[3])
redis.call('pexpire', KEYS[1], ARGV[2])
return 1
"""
# ARGV: owner, ttl_ms, state, record_id ('' = none). -1: another process holds it; 1: a cancel
# was asked for; 0: renewed. A lease that expired meanwhile (Redis restarted, a stall) is taken
# again: this process is still running the pull.
_RENEW = """
local owner = redis.call('hget', KEYS[1], 'owner')
if owner and owner ~= ARGV[1] then return -1 end
redis.call('hset', KEYS[1], 'owner', ARGV[1], 'state', ARGV[3])
if ARGV[4] ~= '' then redis.call('hset', KEYS[1], 'record_id', ARGV[4]) end
redis.call('pexpire', KEYS[1], ARGV[2])
if redis.call('hexists', KEYS[1], 'cancel') == 1 then return 1 end
return 0
"""
# ARGV: owner. Delete the lease only if this process still holds it.
_RELEASE = """
if redis.call('hget', KEYS[1], 'owner') == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""
# Ask the owner to cancel: {owner, record_id} of the lease, or nil when nobody holds one.
_REQUEST_CANCEL = """
local owner = redis.call('hget', KEYS[1], 'owner')
if not owner then return nil end
redis.call('hset', KEYS[1], 'cancel', '1')
return {owner, redis.call('hget', KEYS[1], 'record_id') or ''}
"""

RENEWED, CANCEL_ASKED, LOST = "renewed", "cancel asked", "lost"


@dataclass(frozen=True)
class Lease:
    """Who runs a model's pull, its row in the history, and its state as the owner last wrote it."""

    model_key: str
    owner: str
    record_id: int | None = None
    state: dict[str, Any] | None = None
    cancel_asked: bool = False


def _lease(model_key: str, fields: dict[bytes, bytes]) -> Lease | None:
    """A lease from HGETALL's answer (None for an empty one, or one not shaped like a lease)."""
    owner = fields.get(b"owner")
    if not owner:
        return None
    raw_id = fields.get(b"record_id", b"")
    try:
        state = json.loads(fields[b"state"]) if b"state" in fields else None
    except ValueError:
        state = None
    return Lease(model_key=model_key, owner=owner.decode(), record_id=int(raw_id) if raw_id.isdigit() else None,
                 state=state if isinstance(state, dict) else None, cancel_asked=b"cancel" in fields)


class DownloadOwners:
    """Claim, renew, release, cancel and read the leases of one node's model downloads."""

    def __init__(self, link: RedisLink, node_name: str, *, ttl_s: float = OWNER_TTL_S):
        self._link = link
        self._node = node_name
        self._ttl_ms = str(int(ttl_s * 1000))
        self.owner_id = uuid.uuid4().hex

    def _key(self, model_key: str) -> str:
        return self._link.key("download-lease", self._node, model_key)

    def claim(self, model_key: str, state: dict[str, Any]) -> bool:
        """True: this process runs the pull (it claimed it, or Redis cannot say); False: another does."""
        key, payload = self._key(model_key), _json(state)
        claimed = self._link.call("claiming a download",
                                  lambda client: client.eval(_CLAIM, 1, key, self.owner_id, self._ttl_ms, payload))
        return True if claimed is None else bool(claimed)

    def renew(self, model_key: str, state: dict[str, Any], record_id: int | None) -> str | None:
        """Renew this process's lease with the job's latest state: RENEWED, CANCEL_ASKED, LOST
        (another process holds it now), or None when Redis cannot say."""
        key, payload = self._key(model_key), _json(state)
        answer = self._link.call("renewing a download lease", lambda client: client.eval(
            _RENEW, 1, key, self.owner_id, self._ttl_ms, payload, "" if record_id is None else str(record_id)))
        return None if answer is None else {1: CANCEL_ASKED, -1: LOST}.get(int(answer), RENEWED)

    def release(self, model_key: str) -> None:
        key = self._key(model_key)
        self._link.call("releasing a download lease", lambda client: client.eval(_RELEASE, 1, key, self.owner_id))

    def request_cancel(self, model_key: str) -> Lease | None:
        """Ask the lease's owner to cancel the pull; the lease asked, or None when nobody holds one
        (or Redis cannot say)."""
        key = self._key(model_key)
        answer = self._link.call("asking for a download's cancel",
                                 lambda client: client.eval(_REQUEST_CANCEL, 1, key))
        if not answer:
            return None
        owner, record_id = (part.decode() if isinstance(part, bytes) else str(part) for part in answer)
        return Lease(model_key=model_key, owner=owner, record_id=int(record_id) if record_id.isdigit() else None,
                     cancel_asked=True)

    def lease(self, model_key: str) -> Lease | None:
        """The model's lease, or None when nobody holds one (or Redis cannot say)."""
        leases = self.leases([model_key])
        return None if leases is None else leases[model_key]

    def leases(self, model_keys: list[str]) -> dict[str, Lease | None] | None:
        """Each model's lease (None where nobody holds one); None when Redis cannot say."""
        if not model_keys:
            return {}

        def command(client) -> list[dict[bytes, bytes]]:
            pipe = client.pipeline(transaction=False)
            for model_key in model_keys:
                pipe.hgetall(self._key(model_key))
            return pipe.execute()

        answers = self._link.call("reading download leases", command)
        if answers is None:
            return None
        return {model_key: _lease(model_key, fields) for model_key, fields in zip(model_keys, answers)}

    def held_elsewhere(self) -> list[Lease] | None:
        """The leases of this node held by other processes; None when Redis cannot say."""
        prefix = self._key("")

        def command(client) -> list[Lease]:
            keys = sorted(client.scan_iter(match=prefix + "*", count=500))
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.hgetall(key)
            found = (_lease(key.decode()[len(prefix):], fields) for key, fields in zip(keys, pipe.execute()))
            return [lease for lease in found if lease is not None and lease.owner != self.owner_id]

        return self._link.call("listing download leases", command)


def _json(state: dict[str, Any]) -> str:
    return json.dumps(state, separators=(",", ":"))
