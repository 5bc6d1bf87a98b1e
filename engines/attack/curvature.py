"""The per-row curvature memory of the batched L-BFGS-B solver: a ring buffer of (s, y) pairs and the
two-loop recursion on the free variables."""

from __future__ import annotations

import torch


class CurvatureMemory:
    """Per-row ring buffer of curvature pairs (s, y).

    Slots are read and written through flat row-major indices (`index_select`/`index_copy_`),
    one slot at a time: gathering all pairs at once with advanced indexing materialises two
    (rows, m, n) copies per iteration and was the slowest part of the attack.
    """

    def __init__(self, batch: int, n: int, size: int, like: torch.Tensor) -> None:
        self.size = size
        self.s = like.new_zeros(batch * size, n)  # row r, slot k at r * size + k
        self.y = like.new_zeros(batch * size, n)
        self.count = torch.zeros(batch, dtype=torch.long, device=like.device)
        self.head = torch.zeros(batch, dtype=torch.long, device=like.device)  # next slot to write

    def push(self, rows: torch.Tensor, s: torch.Tensor, y: torch.Tensor, accept: torch.Tensor) -> None:
        """Store (s, y) for `rows` where `accept` (curvature condition held)."""
        slot = self.head[rows]
        flat = rows * self.size + slot
        keep = accept[:, None]
        self.s.index_copy_(0, flat, torch.where(keep, s, self.s.index_select(0, flat)))
        self.y.index_copy_(0, flat, torch.where(keep, y, self.y.index_select(0, flat)))
        step = accept.long()
        self.head[rows] = (slot + step) % self.size
        self.count[rows] = torch.clamp(self.count[rows] + step, max=self.size)

    def add_identity_curvature(self, rows: torch.Tensor, delta: torch.Tensor) -> None:
        """Make the stored pairs of `rows` those of f + ½·delta·‖x‖² (delta per row): y += delta · s, exactly.

        The attack's c search changes only the weight of a quadratic term between runs, so the
        pairs gathered at one c stay exact curvature information at the next.
        """
        flat = (rows[:, None] * self.size + torch.arange(self.size, device=rows.device)).reshape(-1)
        shift = delta.to(self.y.dtype).repeat_interleave(self.size)[:, None] * self.s.index_select(0, flat)
        self.y.index_add_(0, flat, shift)

    def forget(self, rows: torch.Tensor) -> None:
        """Drop the pairs of `rows` (their next direction is steepest descent)."""
        self.count[rows] = 0
        self.head[rows] = 0

    def direction(self, rows: torch.Tensor, g: torch.Tensor, free: torch.Tensor) -> torch.Tensor:
        """-H g on the free variables by the two-loop recursion, pairs restricted to the free set.

        With q kept on the free set, (F s)·q = s·q, so only y needs masking (F y); the update of r
        uses F s so that r stays on the free set too.
        """
        m = self.size
        ages = torch.arange(m, device=g.device)
        base = rows * m
        slots = (self.head[rows, None] - 1 - ages) % m  # newest first
        fs, fy, sy, yy = [], [], [], []
        for j in range(m):
            flat = base + slots[:, j]
            s_j = self.s.index_select(0, flat)
            fy_j = self.y.index_select(0, flat).mul_(free)
            sy.append(torch.linalg.vecdot(s_j, fy_j))
            yy.append(torch.linalg.vecdot(fy_j, fy_j))
            fs.append(s_j.mul_(free))
            fy.append(fy_j)
        sy_t, yy_t = torch.stack(sy, 1), torch.stack(yy, 1)
        ok = (ages < self.count[rows, None]) & (sy_t > 1e-10 * yy_t) & (yy_t > 0)
        rho = torch.where(ok, 1.0 / torch.where(ok, sy_t, torch.ones_like(sy_t)), torch.zeros_like(sy_t))
        newest = ok.float().argmax(1, keepdim=True)  # scale H0 by the newest usable pair
        gamma = torch.where(
            ok.any(1), (sy_t / torch.where(ok, yy_t, torch.ones_like(yy_t))).gather(1, newest).squeeze(1), 1.0
        )
        q = g * free
        alpha = []
        for j in range(m):
            a = rho[:, j] * torch.linalg.vecdot(fs[j], q)
            q.addcmul_(a[:, None], fy[j], value=-1.0)
            alpha.append(a)
        r = q.mul_(gamma[:, None])
        for j in reversed(range(m)):
            beta = rho[:, j] * torch.linalg.vecdot(fy[j], r)
            r.addcmul_((alpha[j] - beta)[:, None], fs[j])
        return r.neg_()
