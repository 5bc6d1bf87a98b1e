"""Fresh-per-minibatch controls for §4.2's pool (issue 24): do the pool's examples or small perturbations do the work?

For each chosen cut k (input, act1, act2, …) a share of the minibatch is perturbed at φ_k(x), with no gradient to
the layers below ("adversarial examples are generated for each layer output and are used to train all the layers
above"), by one step of size ε (rms, in the layer's units: ‖r‖₂ = ε·√n for a layer of n units):
- "fgm": r = ε√n · g/‖g‖ with g = ∇_h CE(g_k(h), y), trained with the true label (Goodfellow et al.'s fast gradient
  method, in L2);
- "vat": virtual adversarial training (Miyato et al.): no label; r = ε√n · g/‖g‖ with g = ∇_r KL(p ‖ p(h + r)) at
  r = ξ√n·d/‖d‖ for a random d (one power-iteration step toward the top eigenvector of the KL's Hessian), p the
  clean prediction (held fixed), and the loss KL(p ‖ p(h + r)).
Perturbed points are not clamped to the layer's box, so the stated norm holds exactly.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from engines.train.layer_cuts import LayerCut


def _scaled(direction: torch.Tensor, rms: float) -> torch.Tensor:
    """`direction` rescaled per example to root-mean-square `rms` (L2 norm rms·√n)."""
    flat = direction.flatten(1)
    norm = flat.norm(dim=1).clamp(min=1e-30)
    scale = rms * flat.shape[1] ** 0.5 / norm
    return direction * scale.view(-1, *[1] * (direction.ndim - 1))


def gradient_perturbation(upper: nn.Module, h: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """FGM's r for points `h` of a layer: the cross-entropy's gradient direction, rms `eps`."""
    point = h.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(upper(point), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, point)
    return _scaled(grad, eps)


def kl_to(clean_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Summed KL(p ‖ q) of the clean prediction p (fixed) to the prediction q of `logits`."""
    p_log = F.log_softmax(clean_logits.detach(), 1)
    return (p_log.exp() * (p_log - F.log_softmax(logits, 1))).sum()


def virtual_perturbation(upper: nn.Module, h: torch.Tensor, eps: float, xi: float, probe: torch.Tensor) -> torch.Tensor:
    """VAT's r for points `h`: one power-iteration step from the random `probe` (same shape as h), rms `eps`."""
    point = h.detach()
    with torch.no_grad():
        clean = upper(point)
    r = _scaled(probe.to(point.device, point.dtype), xi).requires_grad_(True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(kl_to(clean, upper(point + r)), r)
    return _scaled(grad, eps)


def fresh_loss(
    model: nn.Module,
    cuts: list[LayerCut],
    x: torch.Tensor,
    y: torch.Tensor,
    mode: str,
    count: int,
    eps: float,
    xi: float,
    gen: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean loss over the clean batch and `count` freshly perturbed copies of its images (the j-th copy is image
    j mod batch, perturbed at cut j mod cuts); also the clean logits (for the running error).

    φ_k(x) is computed with the model as the loop left it, in train mode (dropout on), deliberately: the clean pass
    is in train mode too, so the perturbed copy is a point of the same (noisy) training-time representation, with a
    dropout mask of its own. Evaluating the lower part in eval mode would give the same result for nets without
    dropout, but would change the trained weights of a dropout net (its masks draw from the global RNG)."""
    logits = model(x)
    total = F.cross_entropy(logits, y, reduction="sum")
    image = torch.arange(count, device=x.device) % len(y)
    which = torch.arange(count) % len(cuts)
    for k, cut in enumerate(cuts):
        mine = image[(which == k).to(x.device)]
        if len(mine) == 0:
            continue
        with torch.no_grad():
            h = cut.lower(x[mine])
        if mode == "fgm":
            r = gradient_perturbation(cut.upper, h, y[mine], eps)
            total = total + F.cross_entropy(cut.upper(h + r), y[mine], reduction="sum")
        else:
            probe = torch.randn(h.shape, generator=gen)
            r = virtual_perturbation(cut.upper, h, eps, xi, probe)
            total = total + kl_to(logits[mine], cut.upper(h + r))
    return total / (len(y) + count), logits
