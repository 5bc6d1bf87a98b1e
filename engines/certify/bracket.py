"""The lower end of the bracket for a batch of images: one entry point for `certify` and `robustness`."""

from __future__ import annotations

import math

import torch
from torch import nn

from engines.certify.alpha import STEPS as ALPHA_STEPS
from engines.certify.crown import margin_spec
from engines.certify.exact import exact_untargeted, solve_targets
from engines.certify.network import Network, network_of
from engines.certify.radius import bisect_radius, crown_radius
from engines.core.events import CancelCheck, never_cancel

CHUNK = 250  # images bounded at once by `radii` (memory grows with it)
ALPHA_WIDER = 2.5  # alpha-crown refines the images whose CROWN bracket (upper / lower) is wider than this


def checked_network(
    model: nn.Module, images: torch.Tensor, normalization: dict | None, device: torch.device | str = "cpu"
) -> Network:
    """The model's chain of operations, checked against the model on these images (InputError if unsupported)."""
    net = network_of(model, tuple(images.shape[1:]), normalization, device)
    net.check_matches(model, images[:64])
    return net


def net_device(net: Network) -> torch.device:
    for op in net.ops:
        for t in vars(op).values():
            if torch.is_tensor(t):
                return t.device
    return torch.device("cpu")


def lower_bounds(
    net: Network,
    method: str,
    x: torch.Tensor,
    labels: torch.Tensor,
    targets: torch.Tensor | None,
    upper: torch.Tensor,
    probes: int = 7,
    cancelled: CancelCheck = never_cancel,
) -> dict[str, torch.Tensor]:
    """L2 lower bounds of the minimum distortion of images x: exact (with the solver's duality gap), crown,
    alpha-crown or ibp. `upper` (B,): the attack's L2 distance (nan where it failed), which bounds the search from above
    (×1.5, so that an unsound bound would show as a violation); `targets` None: untargeted."""
    dev = net_device(net)
    top = torch.where(torch.isfinite(upper), 1.5 * upper.double(), math.sqrt(x[0].numel())).clamp(min=1e-9)
    if method == "exact":
        weight, bias = net.dense_prefix(len(net.ops))
        weight = weight.view(net.classes, -1)
        if targets is None:
            value, _, gap = exact_untargeted(weight, bias, x, labels)
        else:
            res = solve_targets(weight, bias, x.reshape(len(x), -1), targets)
            value, gap = res.lower, res.gap
        return {"lower": value, "exact": value, "gap": gap}
    spec = margin_spec(labels, net.classes, targets).to(dev)
    xs = x.to(dev, torch.float64)
    if method in ("crown", "alpha-crown"):
        steps = ALPHA_STEPS if method == "alpha-crown" else 0
        lower = crown_radius(
            net, xs, spec, top.to(dev), probes, cancelled, alpha_steps=steps, alpha_wider=1.5 * ALPHA_WIDER
        )
    else:
        lower = bisect_radius(net, xs, spec, top.to(dev), method, cancelled=cancelled)
    return {"lower": lower.cpu()}


def radii(net: Network, x: torch.Tensor, labels: torch.Tensor, upper: torch.Tensor) -> tuple[torch.Tensor, str]:
    """Untargeted certified L2 radii of many images (the exact minimum for affine models, else CROWN's), and
    the method used."""
    method = "exact" if net.affine else "crown"
    parts = [
        lower_bounds(net, method, x[i : i + CHUNK], labels[i : i + CHUNK], None, upper[i : i + CHUNK])["lower"]
        for i in range(0, len(x), CHUNK)
    ]
    return torch.cat(parts), method
