"""GPU health as a small state machine shared by the NVML and simulated sources: any fault seen
in a sample makes a GPU unhealthy; with auto-recovery it turns healthy again after a quiet
period without faults, otherwise it stays unhealthy until the agent restarts."""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple


class HealthTracker:
    """Latches the faults observed per GPU index."""

    def __init__(self, auto_recover: bool = True, recover_after_s: float = 60.0) -> None:
        self.auto_recover = auto_recover
        self.recover_after_s = recover_after_s
        self._reason: Dict[int, str] = {}
        self._last_bad: Dict[int, float] = {}

    def observe(self, index: int, faults: Sequence[str], now: float) -> Tuple[bool, Optional[str]]:
        """Record this sample's faults of GPU `index`; return (healthy, reason)."""
        if faults:
            self._reason[index] = "; ".join(faults)
            self._last_bad[index] = now
        elif index in self._reason and self.auto_recover \
                and now - self._last_bad[index] >= self.recover_after_s:
            del self._reason[index]
        reason = self._reason.get(index)
        return reason is None, reason
