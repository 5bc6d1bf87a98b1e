"""Benchmark (run by hand): the eight AlexNet layers at 224 px, three ways of getting a layer's norm.

1. ours: the exact operator norm (and lower bound and full spectrum) of the circular layer, Fourier /
   polyphase for convolutions, SVD for linear layers (`engines.bounds.conv`);
2. plain power iteration through the real (zero-padded) layer from a random start: a lower estimate;
3. `torch.nn.utils.parametrizations.spectral_norm`: power iteration on the kernel reshaped to F × C·kh·kw
   (15 iterations at registration + 1 per forward). That is the norm of a different matrix, not the
   layer's operator norm; the last column shows by how much it differs.

    .venv/bin/python benchmarks/bench_bounds.py [--threads 1] [--power-iters 100] [--precision float64]

`--network MODEL` (e.g. resnet18, alexnet) instead times `frame_bounds` on a torchvision model at 224 px,
layer by layer, as `blindspot bounds` runs it (table spectrum, padded-grid bound, 50 power iterations,
eval-mode BatchNorms folded into their convolutions), without the start-up of the command.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
import torchvision
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from engines.bounds.conv import conv_spectrum, linear_singular_values, pair, power_iteration
from engines.bounds.network import frame_bounds
from engines.bounds.trace import trace_layers


def _timed(fn):
    t0 = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - t0


def _spectral_norm_estimate(layer: nn.Module) -> float:
    sn = spectral_norm(copy.deepcopy(layer).train())
    _ = sn.weight  # one forward-time update, as in training
    p = sn.parametrizations.weight[0]
    wm = p._reshape_weight_to_matrix(sn.parametrizations.weight.original.detach())
    return float(torch.vdot(p._u, torch.mv(wm, p._v)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--power-iters", type=int, default=100)
    ap.add_argument("--precision", choices=("float64", "float32"), default="float64")
    ap.add_argument("--network", metavar="MODEL", help="time frame_bounds on this torchvision model instead")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dtype = torch.float64 if args.precision == "float64" else torch.float32
    if args.network:
        _network(args.network, dtype, args.threads)
        return
    torch.manual_seed(0)
    model = torchvision.models.alexnet(weights=None).eval()
    calls = [c for c in trace_layers(model, (3, 224, 224))[0] if isinstance(c.module, nn.Linear | nn.Conv2d)]
    head = (
        f"{'layer':<13}{'size':<13}{'ours ‖W‖':>10}{'lower':>10}{'s':>7}  {'power it.':>10}{'s':>7}{'Δ%':>8}  "
        f"{'spec.norm':>10}{'s':>7}{'exact resh.':>12}{'resh/ours':>10}"
    )
    print(f"AlexNet (torchvision, random init seed 0) at 3×224×224, {args.threads} thread(s), {args.precision}")
    print(head)
    print("-" * len(head))
    totals = [0.0, 0.0, 0.0]
    for call in calls:
        layer = call.module
        w = layer.weight.detach().to(dtype)
        gen = torch.Generator().manual_seed(0)
        if isinstance(layer, nn.Conv2d):
            size = f"{w.shape[1]}×{w.shape[2]}×{w.shape[3]}×{w.shape[0]}"
            cs, t_ours = _timed(
                lambda w=w, call=call, layer=layer: conv_spectrum(w, call.in_shape[-2:], pair(layer.stride))
            )
            upper, lower = cs.upper, cs.lower
            x0 = torch.randn(*call.in_shape, dtype=dtype, generator=gen)

            def real(x, layer=layer, w=w):
                return layer._conv_forward(x, w, None)

        else:
            size = f"{w.shape[1]}×{w.shape[0]}"
            sv, t_ours = _timed(lambda w=w: linear_singular_values(w))
            upper, lower = float(sv[0]), float(sv[-1])
            x0 = torch.randn(w.shape[1], dtype=dtype, generator=gen)

            def real(x, w=w):
                return x @ w.T

        pw, t_pw = _timed(lambda real=real, x0=x0: power_iteration(real, x0, max_iter=args.power_iters, tol=0.0))
        sn, t_sn = _timed(lambda layer=layer: _spectral_norm_estimate(layer))
        reshaped = float(torch.linalg.svdvals(w.reshape(w.shape[0], -1))[0])
        totals[0] += t_ours
        totals[1] += t_pw
        totals[2] += t_sn
        name = f"{call.name}"
        print(
            f"{name:<13}{size:<13}{upper:>10.4f}{lower:>10.3g}{t_ours:>7.2f}  {pw.sigma:>10.4f}{t_pw:>7.2f}"
            f"{100 * (pw.sigma / upper - 1):>8.3f}  {sn:>10.4f}{t_sn:>7.2f}{reshaped:>12.4f}{reshaped / upper:>10.3f}"
        )
    print("-" * len(head))
    print(f"{'total s':<26}{'':>20}{totals[0]:>7.2f}  {'':>10}{totals[1]:>7.2f}{'':>8}  {'':>10}{totals[2]:>7.2f}")
    print(
        f"power it.: {args.power_iters} iterations through the real zero-padded layer from a random start (a lower "
        "estimate; Δ% vs ours also contains the zero-padding vs circular difference).\n"
        "spec.norm: torch spectral_norm's estimate of σ(W reshaped to F × C·kh·kw) after its default 15+1 "
        "iterations; 'exact resh.' is that matrix's exact norm, 'resh/ours' its ratio to the operator norm."
    )


def _network(name: str, dtype: torch.dtype, threads: int) -> None:
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    size = 299 if name == "inception_v3" else 224
    result = frame_bounds(model, (3, size, size), dtype=dtype, power_iters=50, model_name=name)
    print(f"{name} (torchvision, random init seed 0) at 3×{size}×{size}, {threads} thread(s), frame_bounds")
    head = f"{'layer':<12}{'name':<46}{'size':<16}{'upper':>10}{'guaranteed':>12}{'power':>10}{'s':>7}"
    print(head)
    print("-" * len(head))
    for layer in result.layers:
        power = layer.power["sigma"] if layer.power else float("nan")
        real = layer.upper_real if layer.upper_real is not None else float("nan")
        print(
            f"{layer.label:<12}{layer.name:<46}{layer.size:<16}{layer.upper:>10.4f}{real:>12.4f}{power:>10.4f}"
            f"{layer.seconds:>7.2f}"
        )
    print("-" * len(head))
    print(f"total {result.seconds:.2f} s (layers {sum(x.seconds for x in result.layers):.2f} s)")


if __name__ == "__main__":
    main()
