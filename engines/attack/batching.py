"""How an attack run is cut to fit memory: problems per solver call, images per chunk, and one chunk's solve.

A run's unit of saving is a chunk of images; its unit of solving is a batch of (image, target) problems.
With `--target all` one image has K − 1 problems (999 on ImageNet), more than a GPU may hold at once, so a
chunk's problems are solved in balanced sub-batches of at most `batch` problems, and each image keeps its
closest success over all of them: the same result as one call on every problem, since every problem is
solved on its own rows (`padded_forward` makes the arithmetic independent of the batch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from engines.attack.search import AttackConfig, attack_problems, paper_distortion
from engines.attack.targets import expand_all_targets
from engines.core.errors import InputError
from engines.core.events import CancelCheck, Event, EventSink, SolverStep
from engines.core.memory import device_free_memory

FLOAT = 4  # bytes of a float32
CPU_CAP, CUDA_CAP = 2048, 65536  # problems per solver call at most


def problem_bytes(n_pixels: int, history: int, activation_floats: int = 0) -> int:
    """Memory one (image, target) problem takes in the solver: the L-BFGS history (2·m·n floats) and its
    per-slot copies in the two-loop recursion (2·m·n more), some 32 working vectors of n floats (iterate,
    gradient, the materialised box bounds of the running rows, line-search trial points, the best success,
    temporaries), and the model's activations for one image, kept for the backward pass (×3: forward,
    gradient, padding)."""
    return ((4 * history + 32) * n_pixels + 3 * activation_floats) * FLOAT


def auto_batch_size(n_pixels: int, history: int, device: torch.device, activation_floats: int = 0) -> int:
    """Problems per solver call, bounded by the memory there is: on CUDA half of what the driver has free
    plus what PyTorch holds cached but unused (at most 65,536); on the CPU a quarter of the available
    memory and at most 2048 (a cache-friendly size for the paper's small models)."""
    per_problem = problem_bytes(n_pixels, history, activation_floats)
    if device.type == "cuda":
        return int(max(1, min(CUDA_CAP, 0.5 * device_free_memory(device) // per_problem)))
    return int(max(1, min(CPU_CAP, 0.25 * device_free_memory(device) // per_problem)))


def images_per_chunk(batch: int, per_image: int, cap: int | None = None) -> int:
    """Images per saved chunk: as many whole images' problems as one batch holds (at least one image, whose
    problems are then split into sub-batches), at most `cap`."""
    chunk = max(1, batch // per_image)
    return min(chunk, cap) if cap is not None else chunk


@dataclass
class BatchPlan:
    """Problems per solver call and images per chunk, halved on each out-of-memory failure."""

    batch: int
    per_image: int
    chunk_cap: int | None
    problem_bytes: int
    chosen: str = "auto"
    backoffs: int = 0

    @property
    def chunk(self) -> int:
        return images_per_chunk(self.batch, self.per_image, self.chunk_cap)

    def back_off(self, images: int, device: torch.device) -> None:
        """Halve the batch that failed on `images` images; one problem that does not fit is refused in one line."""
        failed = min(self.batch, images * self.per_image)
        if failed <= 1:
            free = device_free_memory(device)
            raise InputError(
                f"one (image, target) problem does not fit in the memory of {device}: it needs about "
                f"{self.problem_bytes / 2**20:.0f} MiB in the solver, {free / 2**20:.0f} MiB are free; "
                "use a smaller --image-size, a smaller model or another device"
            )
        self.batch, self.backoffs = max(1, failed // 2), self.backoffs + 1

    def to_json(self) -> dict[str, Any]:
        return {
            "problems_per_call": self.batch,
            "images_per_chunk": self.chunk,
            "problems_per_image": self.per_image,
            "chosen": self.chosen,
            "out_of_memory_backoffs": self.backoffs,
            "estimated_bytes_per_problem": self.problem_bytes,
        }


def balanced_size(remaining: int, most: int) -> int:
    """The next piece of `remaining` items cut into the fewest pieces of at most `most`, all of equal size
    give or take one (10,000 images by 4,444: 3,334 + 3,333 + 3,333, not 4,444 + 4,444 + 1,112)."""
    pieces = -(-remaining // max(1, most))
    return -(-remaining // max(1, pieces))


def balanced_slices(total: int, most: int) -> list[tuple[int, int]]:
    """[0, total) in balanced pieces of at most `most` (see `balanced_size`)."""
    out, pos = [], 0
    while pos < total:
        stop = pos + balanced_size(total - pos, most)
        out.append((pos, stop))
        pos = stop
    return out


def _sub_batch_progress(on_event: EventSink, part: int, parts: int) -> EventSink:
    """A sub-batch's solver steps as steps of the whole chunk: part k of K covers the k-th K-th of the bar."""
    if parts == 1:
        return on_event

    def emit(event: Event) -> None:
        if isinstance(event, SolverStep) and event.total is not None:
            event = replace(event, done=part * event.total + event.done, total=parts * event.total)
        on_event(event)

    return emit


def attack_chunk(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    targets: torch.Tensor | None,
    classes: int,
    config: AttackConfig,
    device: torch.device,
    batch: int,
    *,
    on_event: EventSink,
    cancel: CancelCheck,
    task: str,
) -> dict[str, torch.Tensor]:
    """Attack images `x` (labels `y`) toward `targets` (None: every wrong label, keeping each image's closest
    success), `batch` problems per solver call at most; the chunk's per-image arrays as saved."""
    if targets is None:
        image, tgt = expand_all_targets(y, classes)
    else:
        image, tgt = torch.arange(len(y)), targets.cpu()
    n = len(y)
    problems = torch.arange(len(image))
    first = torch.full((n,), len(image)).scatter_reduce(0, image, problems, "amin")  # kept when nothing succeeds
    best_sq = torch.full((n,), math.inf)
    best_k, best_x = first.clone(), x.clone()
    best_c = torch.full((n,), math.nan)
    evals = torch.zeros(n, dtype=torch.long)  # forward+backward passes per image, over all its problems
    forward_evals = torch.zeros(n, dtype=torch.long)
    slices = balanced_slices(len(image), batch)
    for part, (s, e) in enumerate(slices):
        img = image[s:e]
        res = attack_problems(
            model,
            x[img].to(device),
            tgt[s:e].to(device),
            config,
            on_event=_sub_batch_progress(on_event, part, len(slices)),
            cancel=cancel,
            task=task,
            groups=(img - img[0]).to(device),
        )
        evals.index_add_(0, img, res.gradient_evals.cpu())
        forward_evals.index_add_(0, img, res.forward_evals.cpu())
        sq, x_adv, c = res.sq_dist.cpu(), res.x_adv.cpu(), res.c.cpu()
        sq = torch.where(res.success.cpu(), sq, torch.full_like(sq, math.inf))
        low = torch.full((n,), math.inf).scatter_reduce(0, img, sq, "amin")  # each image's closest in this part
        at_low = sq == low[img]
        k = torch.full((n,), len(image)).scatter_reduce(0, img[at_low], problems[s:e][at_low], "amin")
        better = low < best_sq  # strictly: on a tie the earlier problem stays, as argmin over all would keep
        best_sq = torch.where(better, low, best_sq)
        best_k = torch.where(better, k, best_k)
        rows = (k - s).clamp(0, e - s - 1)
        best_x = torch.where(better.view(-1, *([1] * (x.dim() - 1))), x_adv[rows], best_x)
        best_c = torch.where(better, c[rows], best_c)
    reached = torch.isfinite(best_sq)
    # the model already sends x itself to the target (for --target all: it misclassifies x): nothing to find
    trivial = reached & (best_sq == 0)
    success = reached & ~trivial
    x_adv = torch.where(success.view(-1, *([1] * (x.dim() - 1))), best_x, x)
    diff = (x_adv - x).flatten(1)
    nan = torch.full((n,), math.nan)
    return {
        "x_adv": x_adv.contiguous(),
        "target": tgt[best_k].contiguous(),
        "success": success.to(torch.uint8),
        "trivial": trivial.to(torch.uint8),
        "distortion": torch.where(success, paper_distortion(x, x_adv), nan),
        "l2": torch.where(success, diff.norm(dim=1), nan),
        "linf": torch.where(success, diff.abs().amax(1), nan),
        "c": torch.where(success, best_c, nan),
        "evaluations": evals,
        "forward_evaluations": forward_evals,
    }
