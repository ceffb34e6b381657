"""One owner per model's download across the processes of a node: a Redis key with an expiry.

The process that starts a pull SETs `<prefix>:download:<node>:<model>` to its own id (NX, with
an expiry of OWNER_TTL_S) and renews it every RENEW_EVERY_S while the pull runs; it deletes the
key when the pull ends (only if it still holds it). A second request for the same model on
another process finds the key held and joins: its clients already get the owner's
`model_download_progress` events through the Socket.IO queue. A process that dies holding a key
frees it within OWNER_TTL_S. The key is per node: each GPU host has its own Ollama. Without
Redis (or while it is away) each process owns its own downloads, as before.
"""
from __future__ import annotations

import uuid

from fleet.link import RedisLink

OWNER_TTL_S = 30
RENEW_EVERY_S = 10.0
# Delete the key only if this process still holds it.
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


class DownloadOwners:
    """Claim, renew and release the right to run one model's pull."""

    def __init__(self, link: RedisLink, node_name: str):
        self._link = link
        self._node = node_name
        self.owner_id = uuid.uuid4().hex

    def _key(self, model_key: str) -> str:
        return self._link.key("download", self._node, model_key)

    def claim(self, model_key: str) -> bool:
        """True: this process runs the pull (it claimed it, or Redis cannot say); False: another does."""
        key = self._key(model_key)

        def command(client) -> bool:
            if client.set(key, self.owner_id, nx=True, ex=OWNER_TTL_S):
                return True
            return client.get(key) == self.owner_id.encode()

        claimed = self._link.call("claiming a download", command)
        return True if claimed is None else claimed

    def renew(self, model_key: str) -> None:
        key = self._key(model_key)
        self._link.call("renewing a download claim", lambda client: client.set(key, self.owner_id, ex=OWNER_TTL_S))

    def release(self, model_key: str) -> None:
        key = self._key(model_key)
        self._link.call("releasing a download claim", lambda client: client.eval(_RELEASE, 1, key, self.owner_id))
