"""Per-key quota usage shared by the gateway replicas, so API-key limits hold cluster-wide.

One named Ray actor per application keeps each gateway replica's latest per-key usage; every
replica syncs about once a second, handing in its own and getting back the others' sums
(`Quotas.elsewhere`). Admission stays local (no remote call on the request path), so a key can
overshoot by at most one sync period of traffic. A replica unheard from for `STALE_S` no longer
counts (it died or was scaled away). The ledger lives as long as the gateway replica that made
it; when it goes, the next sync makes (or finds) a new one, refilled within a period.
"""

from __future__ import annotations

import asyncio
import logging
import time

import ray
from ray.exceptions import RayError

from cluster.api.auth import KeyUsage, Quotas

logger = logging.getLogger(__name__)
STALE_S = 10.0
# A sync slower than this counts as a lost ledger. Generous: the first call waits for the actor's
# worker to start, seconds on a loaded node (one second made every sync time out on a busy box).
SYNC_TIMEOUT_S = 10.0


class QuotaLedger:
    def __init__(self) -> None:
        self._by_replica: dict[str, tuple[float, dict[str, KeyUsage]]] = {}

    def sync(self, replica: str, usage: dict[str, KeyUsage], now: float) -> dict[str, KeyUsage]:
        """Record `replica`'s usage; return the other live replicas' usage summed per key."""
        self._by_replica[replica] = (now, usage)
        for name in [r for r, (at, _) in self._by_replica.items() if at < now - STALE_S]:
            del self._by_replica[name]
        out: dict[str, KeyUsage] = {}
        for name, (_, theirs) in self._by_replica.items():
            if name != replica:
                for key, used in theirs.items():
                    out[key] = out.get(key, KeyUsage()) + used
        return out


def _ledger(app_name: str):
    actor = ray.remote(QuotaLedger).options(
        name=f"gpt-oss-quota-ledger-{app_name}",
        namespace="serve",
        get_if_exists=True,
        num_cpus=0,  # owned by the gateway replica that made it; found or remade by the rest
    )
    return actor.remote()


async def sync_forever(quotas: Quotas, app_name: str, replica: str, period_s: float) -> None:
    """This replica's side of the ledger: runs for the replica's life (its lifespan task). Usage
    windows run on this process's monotonic clock; staleness across processes on wall time."""
    ledger = None
    while True:
        try:
            ledger = ledger or _ledger(app_name)
            mine = quotas.usage(time.monotonic())
            reply = ledger.sync.remote(replica, mine, time.time())
            quotas.elsewhere(await asyncio.wait_for(reply, timeout=SYNC_TIMEOUT_S))
        except (RayError, TimeoutError) as err:  # lost or hung: make (or find) it again
            logger.warning("quota ledger unavailable (%s): limits count this replica only", err)
            quotas.elsewhere({})
            ledger = None
        except Exception:
            logger.exception("quota ledger sync failed: limits count this replica only")
            quotas.elsewhere({})
        await asyncio.sleep(period_s)
