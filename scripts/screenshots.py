"""Screenshots of every workbench screen for the README: headless app -> SVG -> PNG in docs/screenshots/.

usage: .venv/bin/python scripts/screenshots.py [--size 120x34] [--out docs/screenshots]

Textual writes SVG; the PNGs need cairosvg (not a project dependency: `.venv/bin/pip install cairosvg`
for this purpose only) or librsvg's `rsvg-convert` (`apt-get install librsvg2-bin`). Without either the
SVGs are kept and the script says so. Images use half-block cells, as in a plain terminal; for the
real terminal's pixels (sixel) see scripts/terminal_check.sh, whose screenshots are in docs/screenshots/terminal/.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
from textual.widgets import ProgressBar

ROOT = Path(__file__).resolve().parent.parent


async def settle(pilot, rounds: int = 3) -> None:
    for _ in range(rounds):
        await pilot.pause()
        await pilot.app.workers.wait_for_complete()
    await pilot.pause(0.2)


async def shoot(size: tuple[int, int], out: Path, work: Path) -> list[Path]:
    from blindspot.app import create_app
    from engines.attack.search import AttackConfig
    from engines.core.context import RunContext
    from engines.transfer.operation import run_transfer
    from engines.transfer.request import TransferRequest
    from screens.state import Settings

    matrix = work / "transfer-matrix"
    request = TransferRequest(
        sources=("softmax1", "n100-100-10"),
        targets=("softmax1", "n100-100-10", "n200-200-10"),
        split="test",
        n=64,
        noise=(0.1,),
        amplify_rms=0.1,
        config=AttackConfig(c_steps=3, max_iter=30),
    )
    run_transfer(request, RunContext(device="cpu", out=matrix, overwrite=True))
    settings = Settings(
        device="cpu", runs_dir=work / "runs", matrix_path=matrix, attack={"n": 256, "c_steps": 9, "max_iter": 100}
    )
    app = create_app(settings, graphics_mode="halfblock")
    svgs: list[Path] = []

    def save(name: str) -> None:
        svgs.append(Path(app.save_screenshot(filename=f"{name}.svg", path=str(out))))

    async with app.run_test(size=size) as pilot:
        await settle(pilot)
        save("1-models")
        await pilot.press("2")
        await settle(pilot)
        save("2-gallery")
        await pilot.press("down", "right", "right", "enter")
        await settle(pilot)
        save("2b-gallery-enlarged")
        await pilot.press("escape", "3", "s")
        bar = app.screen.query_one("#bar", ProgressBar)
        while (bar.percentage or 0) < 0.4:
            await asyncio.sleep(0.05)
        save("3-attack-streaming")
        await settle(pilot)
        save("3b-attack-done")
        await pilot.press("4")
        await settle(pilot)
        await pilot.press("right", "down")
        save("4-transfer")
        await pilot.press("enter")
        await settle(pilot)
        save("4b-transfer-cell")
        await pilot.press("escape", "5")
        await settle(pilot)
        await pilot.press("down")
        await pilot.pause()
        save("5-bounds")
        await pilot.press("6")
        await settle(pilot)
        await pilot.pause(0.5)
        save("6-runs")
    return svgs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="120x34", help="terminal size WIDTHxHEIGHT")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("BLINDSPOT_CACHE", str(Path(tmp) / "cache"))
        svgs = asyncio.run(shoot((width, height), args.out, Path(tmp)))
    try:
        import cairosvg
    except ImportError:
        cairosvg = None
    rsvg = shutil.which("rsvg-convert")
    if cairosvg is None and rsvg is None:
        print(f"wrote {len(svgs)} SVGs to {args.out}; install cairosvg into the venv (or rsvg-convert) to get PNGs")
        return
    for svg in svgs:
        png = svg.with_suffix(".png")
        if cairosvg is not None:
            cairosvg.svg2png(url=str(svg), write_to=str(png), output_width=width * 10)
        else:
            subprocess.run(
                [rsvg, "--width", str(width * 10), "--keep-aspect-ratio", str(svg), "-o", str(png)], check=True
            )
        svg.unlink()
        print(f"wrote {png}")


if __name__ == "__main__":
    main()
