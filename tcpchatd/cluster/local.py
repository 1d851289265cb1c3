"""The embedded hall's broker: one process alone, nothing to reach."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..chat.broker import UNCLAIMED

NO_OTHERS: frozenset[str] = frozenset()


class LocalBroker:
    """Every claim is granted (the hall checks its own members), nothing is sent."""

    node = None

    def claim(self, nickname: str, info: dict[str, Any],
              done: Callable[[str | None], None]) -> None:
        done(UNCLAIMED)

    def release(self, nickname: str, token: str) -> None:
        pass

    def publish(self, event: dict[str, Any]) -> None:
        pass

    def others(self) -> frozenset[str]:
        return NO_OTHERS

    def gather(self, mine: dict, timeout: float) -> tuple[dict[str, dict], list[str]]:
        return {"": mine}, []

    def reply(self, key: str, stats: dict) -> None:
        pass

    def health(self) -> dict[str, float]:
        return {}

    # --- as the daemon runs it: nothing to start, reach or hand over
    linked = True

    def attach(self, relay: Any, on_event: Callable[[dict], None]) -> None:
        pass

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def pause(self) -> dict | None:
        return None
