"""STM's memory read (paper §3.1): the affinity of a query frame's key with every memory position, and the
weighted sum of the memory's values. Shapes as in ``network``: keys (B, Ok, Ck, N), values (B, O, Cv, N)."""

from __future__ import annotations

import math

import torch


def affinity_logits(mem_keys: torch.Tensor, query_key: torch.Tensor) -> torch.Tensor:
    """k_q^T k_m / sqrt(Ck) in float32: mem_keys (B, Ok, Ck, N), query_key (B, Ck, h, w) -> (B, Ok, h*w, N),
    query positions first, so that the softmax over the memory (STM's read weights) runs along contiguous
    rows: a softmax over a strided axis is several times slower (docs/performance.md)."""
    kq = query_key.float().flatten(2).transpose(-1, -2)[:, None]  # (B, 1, hw, Ck)
    return torch.matmul(kq, mem_keys.float()) / math.sqrt(mem_keys.shape[2])


def affinity(mem_keys: torch.Tensor, query_key: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Memory read weights (STM): softmax over the N memory positions of k_m^T k_q / sqrt(Ck).

    mem_keys (B, Ok, Ck, N), query_key (B, Ck, h, w) -> (B, Ok', N, h*w). The logits and the softmax run
    in float32 under any autocast: a softmax over thousands of positions shifts visibly when its logits
    are rounded to 8 bits of mantissa. ``valid`` (B, Ok, N) bool leaves out positions that hold no value
    (a memory frame from before an object was added); a row with no valid position gets zero weights."""
    with torch.autocast(mem_keys.device.type, enabled=False):
        logits = affinity_logits(mem_keys, query_key)  # (B, Ok, hw, N)
        if valid is not None:
            logits = logits.masked_fill(~valid[..., None, :], float("-inf"))
        p = torch.softmax(logits, dim=-1)
        if valid is not None:
            p = p.nan_to_num_(0.0)
        return p.transpose(-1, -2)  # (B, Ok, N, hw), a view: the matrix products take it as it is


def read(p: torch.Tensor, mem_values: torch.Tensor) -> torch.Tensor:
    """Weighted sum of memory values: p (B, 1 or O, N, hw), mem_values (B, O, Cv, N) -> (B, O, Cv, hw)."""
    B, O, Cv, N = mem_values.shape
    p = p.to(mem_values.dtype)  # the float32 weights meet values stored in the compute dtype
    if p.shape[1] == 1:  # weights shared by all objects: one matrix product for all of them
        return torch.matmul(mem_values.reshape(B, O * Cv, N), p[:, 0]).view(B, O, Cv, -1)
    return torch.matmul(mem_values, p)  # (B, O, Cv, hw)


def read_memory(
    keys: torch.Tensor, values: torch.Tensor, query_key: torch.Tensor, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Each object's readout (B, O, Cv, hw) from keys (B, Ok, Ck, N), values (B, O, Cv, N) and
    ``valid`` (B, O, N) bool (None: every position holds every object).

    With keys shared by all objects (Ok = 1) the read costs one exponentiated affinity whatever the
    objects hold: each object's softmax over its own positions is the shared exp(logits - max)
    renormalised by its sum over those positions (the shift cancels), so objects added on later frames
    do not turn the read into one softmax per object. An object without memory reads zeros."""
    if valid is None or bool(valid.all()):
        return read(affinity(keys, query_key), values)
    if keys.shape[1] > 1:  # one key per object (STM's memory encoder): per-object weights anyway
        return read(affinity(keys, query_key, valid), values)
    B, O, Cv, N = values.shape
    with torch.autocast(keys.device.type, enabled=False):
        logits = affinity_logits(keys, query_key)[:, 0]  # (B, hw, N)
        e = torch.exp(logits - logits.amax(dim=-1, keepdim=True)).transpose(-1, -2)  # (B, N, hw)
        norm = torch.matmul(valid.float(), e)  # (B, O, hw): each object's softmax denominator
        held = (values * valid[:, :, None]).reshape(B, O * Cv, N)  # positions an object does not hold add 0
        readout = torch.matmul(held, e.to(values.dtype)).view(B, O, Cv, -1).float()
        readout = readout / norm.clamp_min(torch.finfo(torch.float32).tiny)[:, :, None]
    return readout.to(values.dtype)
