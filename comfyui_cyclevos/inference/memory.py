"""The memory bank of the inference engine (STM's external memory, with a bound).

Schedule (paper §4.3, "MEM"): the first frame is permanent, every K-th frame is added, and the previous
frame is kept as temporary memory. Unlike STM, which appends forever, the bank holds at most
``capacity`` non-first entries (the oldest periodic entry goes first, then the oldest user-given one),
so time and memory per frame do not grow with the video's length.

The keys and values live in buffers allocated once for ``capacity + 2`` frames, laid out as the network
reads them (positions last), so a read is a view: nothing is re-stacked per frame. Each object has a
validity flag per frame: an object added on frame t has no value in the frames memorised before t.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import MemoryConfig


@dataclass
class MemoryEntry:
    frame_index: int
    kind: str  # "first", "user" (a mask given on a later frame), "periodic" or "temp"
    slot: int  # its column in the bank's buffers


class MemoryBank:
    """Keys (Ok, Ck, S, hw), values (O, Cv, S, hw) and validity (O, S) for S = capacity + 2 frame slots;
    the used slots are always 0..len-1 (a dropped entry's slot is refilled with the last one)."""

    def __init__(
        self, config: MemoryConfig = MemoryConfig(), shared_key: bool = True, dtype: torch.dtype = torch.float32
    ):
        if config.capacity < 1:
            raise ValueError("memory capacity must be at least 1")
        self.config = config
        self.shared_key = shared_key  # one key for all objects (fused encoder) or one per object (STM)
        self.dtype = dtype  # of the values; keys stay float32 (the read's logits are float32)
        self.slots = config.capacity + 2  # first + capacity + the temporary previous frame
        self.entries: list[MemoryEntry] = []
        self.temp: MemoryEntry | None = None
        self.keys = self.values = self.valid = None  # allocated by the first write

    def __len__(self) -> int:
        return len(self.entries) + (self.temp is not None)

    @staticmethod
    def read_bytes(slots: int, hw: int) -> int:
        """Working memory of one read: float32 logits and weights, (slots*hw) x hw each."""
        return 2 * 4 * slots * hw * hw

    def all_entries(self) -> list[MemoryEntry]:
        return self.entries + ([self.temp] if self.temp is not None else [])

    # writing ---------------------------------------------------------------------------------
    def write(self, frame_index: int, kind: str, key: torch.Tensor, value: torch.Tensor) -> None:
        """Store one frame: key (Ok, Ck, hw), value (O, Cv, hw), every object valid. ``temp`` replaces the
        previous temporary entry; a lasting entry (first, user, periodic) ends it (the previous frame is
        now in memory for good) and drops the oldest lasting entries over capacity."""
        if self.keys is None:
            self._allocate(key, value)
        if kind == "temp":
            entry = self.temp or MemoryEntry(frame_index, kind, len(self))
            entry.frame_index = frame_index
            self.temp = entry
        else:
            if self.temp is not None:
                self._free(self.temp)
                self.temp = None
            entry = MemoryEntry(frame_index, kind, len(self))
            self.entries.append(entry)
        s = entry.slot
        self.keys[:, :, s] = key
        self.values[:, :, s] = value.to(self.dtype)
        self.valid[:, s] = True
        if kind != "temp":
            while sum(e.kind != "first" for e in self.entries) > self.config.capacity:
                for old_kind in ("periodic", "user"):
                    old = next((e for e in self.entries if e.kind == old_kind), None)
                    if old is not None:
                        self.entries.remove(old)
                        self._free(old)
                        break

    def _allocate(self, key: torch.Tensor, value: torch.Tensor) -> None:
        Ok, Ck, hw = key.shape
        O, Cv, _ = value.shape
        self.keys = key.new_zeros(Ok, Ck, self.slots, hw, dtype=torch.float32)
        self.values = value.new_zeros(O, Cv, self.slots, hw, dtype=self.dtype)
        self.valid = torch.zeros(O, self.slots, dtype=torch.bool, device=value.device)

    def _free(self, entry: MemoryEntry) -> None:
        """Move the entry in the last used slot into ``entry``'s slot, keeping slots 0..len-1 used."""
        last = len(self.entries) + (self.temp is not None)  # ``entry`` is already out of the lists, or is temp
        if entry is self.temp:
            last -= 1
        moved = next((e for e in self.all_entries() if e.slot == last and e is not entry), None)
        if moved is not None:
            self.keys[:, :, entry.slot] = self.keys[:, :, last]
            self.values[:, :, entry.slot] = self.values[:, :, last]
            self.valid[:, entry.slot] = self.valid[:, last]
            moved.slot = entry.slot
        self.valid[:, last] = False

    # objects ---------------------------------------------------------------------------------
    def add_objects(self, n: int) -> None:
        """Objects added later have no value in the frames already stored: zero rows, marked invalid."""
        if self.keys is None:
            return
        if not self.shared_key:
            self.keys = torch.cat([self.keys, self.keys.new_zeros(n, *self.keys.shape[1:])])
        self.values = torch.cat([self.values, self.values.new_zeros(n, *self.values.shape[1:])])
        self.valid = torch.cat([self.valid, self.valid.new_zeros(n, self.slots)])

    def remove_objects(self, rows: list[int]) -> None:
        """Forget the objects at ``rows`` (their values and validity; their keys too when per object)."""
        if self.keys is None:
            return
        keep = [r for r in range(self.values.shape[0]) if r not in set(rows)]
        if not self.shared_key:
            self.keys = self.keys[keep]
        self.values, self.valid = self.values[keep], self.valid[keep]

    # reading ---------------------------------------------------------------------------------
    def read(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Views of the used slots: keys (1, Ok, Ck, N), values (1, O, Cv, N), valid (1, O, N) or None
        when every object holds every position (N = frames * hw)."""
        n = len(self)
        if n == 0:
            raise RuntimeError("the memory is empty: the first frame needs a mask")
        Ok, Ck, _, hw = self.keys.shape
        O, Cv = self.values.shape[:2]
        keys = self.keys[:, :, :n].reshape(1, Ok, Ck, n * hw)
        values = self.values[:, :, :n].reshape(1, O, Cv, n * hw)
        valid = self.valid[:, :n]
        if bool(valid.all()):
            return keys, values, None
        return keys, values, valid[:, :, None].expand(O, n, hw).reshape(1, O, n * hw)

    def holds(self) -> torch.Tensor:
        """(O,) bool: the objects that have a value in at least one stored frame."""
        return self.valid[:, : len(self)].any(1) if self.valid is not None else torch.zeros(0, dtype=torch.bool)

    def value_of(self, entry: MemoryEntry) -> torch.Tensor:
        """(O, Cv, hw) values stored for ``entry``."""
        return self.values[:, :, entry.slot]

    def valid_of(self, entry: MemoryEntry) -> torch.Tensor:
        """(O,) bool: the objects that ``entry`` holds."""
        return self.valid[:, entry.slot]
