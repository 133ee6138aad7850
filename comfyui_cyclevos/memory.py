"""The memory bank of the inference engine (STM's external memory, with a bound).

Schedule (paper §4.3, "MEM"): the first frame is permanent, every K-th frame is added, and the previous
frame is kept as temporary memory. Unlike STM, which appends forever, the bank holds at most
``capacity`` non-first entries (the oldest periodic entry goes first, then the oldest user-given one),
so time and memory per frame do not grow with the video's length.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import MemoryConfig


@dataclass
class MemoryEntry:
    frame_index: int
    kind: str  # "first", "user" (a mask given on a later frame), "periodic" or "temp"
    key: torch.Tensor  # (Ok, Ck, h, w): Ok = 1 when the key is shared by all objects
    value: torch.Tensor  # (O, Cv, h, w)
    valid: torch.Tensor  # (O,) bool: False for objects added after this frame

    def add_objects(self, n: int) -> None:
        """Objects added later have no value in this frame: pad with zeros and mark them invalid."""
        if self.key.shape[0] != 1:
            self.key = torch.cat([self.key, self.key.new_zeros(n, *self.key.shape[1:])])
        self.value = torch.cat([self.value, self.value.new_zeros(n, *self.value.shape[1:])])
        self.valid = torch.cat([self.valid, self.valid.new_zeros(n)])


class MemoryBank:
    def __init__(self, config: MemoryConfig = MemoryConfig()):
        if config.capacity < 1:
            raise ValueError("memory capacity must be at least 1")
        self.config = config
        self.entries: list[MemoryEntry] = []
        self.temp: MemoryEntry | None = None

    def __len__(self) -> int:
        return len(self.entries) + (self.temp is not None)

    def add(self, entry: MemoryEntry) -> None:
        """Add a lasting entry (first, user or periodic) and drop the oldest when over capacity."""
        self.entries.append(entry)
        self.temp = None  # the previous frame is now in memory for good
        while sum(e.kind != "first" for e in self.entries) > self.config.capacity:
            for kind in ("periodic", "user"):
                old = next((e for e in self.entries if e.kind == kind), None)
                if old is not None:
                    self.entries.remove(old)
                    break

    def set_temp(self, entry: MemoryEntry) -> None:
        self.temp = entry

    def add_objects(self, n: int) -> None:
        for e in self.all_entries():
            e.add_objects(n)

    def all_entries(self) -> list[MemoryEntry]:
        return self.entries + ([self.temp] if self.temp is not None else [])

    def stacked(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """keys (1, Ok, T, Ck, h, w), values (1, O, T, Cv, h, w), valid (1, O, T) or None if all valid."""
        entries = self.all_entries()
        if not entries:
            raise RuntimeError("the memory is empty: the first frame needs a mask")
        keys = torch.stack([e.key for e in entries], 1)[None]
        values = torch.stack([e.value for e in entries], 1)[None]
        valid = torch.stack([e.valid for e in entries], 1)[None]
        return keys, values, (None if bool(valid.all()) else valid)
