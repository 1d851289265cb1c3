"""The broker interface: what the hall asks of the rest of a cluster.

The hall calls a Broker and nothing else to reach other nodes; cluster/local.py (the
embedded hall: no other node) and cluster/redis.py implement it. A broker hands the
other nodes' events back through the hall's relay (relay.py).

Events are plain dicts with a `kind`; the broker adds the origin `node`. Kinds the hall
publishes: join (a member in a room), part, leave (out of every room), nick, message,
topic, announce (everyone's), ack, confirms, tally (for the origin node named in `to`);
the room an event is in is named in `room`. The broker itself: hello (a node (re)joining:
every node tells where its members are), bye. Kinds the admin side publishes: kick, ban,
unban, stats.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

# claim() when no broker can be asked (it is lost): the member joins this node's hall
# and its nickname is claimed when the broker is back.
UNCLAIMED = ""


class Broker(Protocol):
    @property
    def node(self) -> str | None:
        """This node's name; None for a process alone."""

    def claim(self, nickname: str, info: dict[str, Any],
              done: Callable[[str | None], None]) -> None:
        """Claim a nickname for a member of this node, atomically across the cluster, and
        call done() with the claim's token (UNCLAIMED if the broker is out of reach), or
        None if another member holds it: at once when no broker needs asking, else from
        the broker's own thread (never an event loop's). `info`: what `who` on other
        nodes shows (addr, tls, since)."""

    def release(self, nickname: str, token: str) -> None:
        """Give a claim up, only if it is still the one `token` names."""

    def publish(self, event: dict[str, Any]) -> None:
        """Send an event to every node, in the order of calls; never blocks (called
        under the hall's lock)."""

    def others(self) -> frozenset[str]:
        """The other nodes alive now: each acknowledges every public message."""

    def gather(self, mine: dict, timeout: float) -> tuple[dict[str, dict], list[str]]:
        """Every live node's counters, ours being `mine`: ({node: counters}, the nodes
        that did not answer within timeout)."""

    def reply(self, key: str, stats: dict) -> None:
        """Answer another node's gather()."""

    def health(self) -> dict[str, float]:
        """The link's numbers for metrics (none for a process alone): broker_lag_s (how
        old the newest event read was when read), broker_events_read, broker_queue
        (events waiting to be written), broker_missed (events lost while cut off),
        broker_gap_events (other nodes' events this node never read)."""


class BrokerService(Broker, Protocol):
    """A broker as the daemon runs it (service/main.py, service/upgrade.py)."""

    @property
    def linked(self) -> bool:
        """It reaches the other nodes now."""

    def attach(self, relay: Any, on_event: Callable[[dict], None]) -> None:
        """The room's relay, which the other nodes' events go to; on_event takes the
        admin's (kick, ban, unban, stats)."""

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def pause(self) -> dict | None:
        """For an upgrade: stop at a batch's end, write what is queued; where the new
        image goes on."""
