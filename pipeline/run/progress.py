"""The job's progress bar."""

from __future__ import annotations

import time
from typing import Any, Optional

__all__ = ["Progress"]


class Progress:
    """tqdm bar in audio hours with RTFx and ETA (total from the counting pass); does nothing
    when disabled."""

    def __init__(self, total_seconds: Optional[float], enabled: bool):
        self.bar = None
        self.start = time.perf_counter()
        if enabled:
            from tqdm import tqdm

            total = None if total_seconds is None else round(total_seconds / 3600, 4)
            self.bar = tqdm(total=total, unit="h", desc="audio", bar_format="{l_bar}{bar}| {n:.3f}/{total_fmt} h [{elapsed}<{remaining}{postfix}]")

    def update(self, result: dict[str, Any], done_seconds: float) -> None:
        if self.bar is None:
            return
        wall = time.perf_counter() - self.start
        self.bar.update(round(result["audio_seconds"] / 3600, 6))
        self.bar.set_postfix_str(f"RTFx {done_seconds / max(wall, 1e-9):.1f}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
