"""Check the workbench's images in a real terminal: xterm as a VT340 under Xvfb, screenshots compared with the data.

For each renderer (sixel, found by the app's own probe of xterm; half-blocks, `--graphics halfblock`) it
starts `blindspot tui` in xterm, opens the Gallery (2), waits for the units run, takes a screenshot, then
runs an attack (3, s), waits for it, takes another. In each screenshot it looks for the images the run
folders say are shown (the first unit's top images; the first example's original, difference and
adversarial image), each drawn as the renderer draws it, by normalised cross-correlation, and requires a
correlation of at least 0.9 at every tile (the tiles of a row side by side). Screenshots are kept in --out.

Needs xterm, Xvfb, ImageMagick's `import` and xdotool (scripts/terminal_check.sh installs them).
Usage: python scripts/terminal_check.py [--out DIR] [--modes sixel,halfblock]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

COLS, ROWS, FONT_SIZE = 120, 40, 9
THRESHOLD = 0.9
TOOLS = ("xterm", "Xvfb", "import", "xdotool")


def grey(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return a.mean(axis=2) if a.ndim == 3 else a


def ncc_map(image: np.ndarray, template: np.ndarray) -> np.ndarray:
    """Normalised cross-correlation of `template` at every position of `image` (both grey)."""
    from scipy.signal import fftconvolve

    t = template - template.mean()
    norm = math.sqrt(float((t**2).sum())) or 1.0
    num = fftconvolve(image, t[::-1, ::-1], mode="valid")
    ones = np.ones(template.shape)
    s = fftconvolve(image, ones, mode="valid")
    s2 = fftconvolve(image**2, ones, mode="valid")
    var = np.maximum(s2 - s**2 / template.size, 1e-6)
    return num / (np.sqrt(var) * norm)


def drawn_like(source: np.ndarray, mode: str, cell: tuple[int, int], scale: float) -> np.ndarray:
    """How a renderer draws `source` at `scale`: pixels ×scale (sixel), or half-block cells of cell/2 px."""
    from screens.pictures import scaled

    h, w = source.shape[:2]
    if mode == "sixel":
        return np.asarray(scaled(source, round(w * scale), round(h * scale)))
    small = grey(scaled(source, max(1, round(w * scale)), max(1, round(h * scale))))
    if small.shape[0] % 2:
        small = np.vstack([small, small[-1:]])
    top = (cell[1] + 1) // 2  # '▀' fills the upper half of a cell: rows alternate top, bottom
    heights = np.tile([top, cell[1] - top], small.shape[0] // 2)
    return np.repeat(np.repeat(small, heights, axis=0), cell[0], axis=1)


def find(shot: np.ndarray, source: np.ndarray, mode: str, cell: tuple[int, int], region=None):
    """(correlation, x, y, scale) of the best match of `source` drawn by `mode` in `shot` (grey)."""
    scales = (2, 3, 4) if mode == "sixel" else (0.5, 0.75, 1.0)
    x0, y0, x1, y1 = region or (0, 0, shot.shape[1], shot.shape[0])
    part = shot[y0:y1, x0:x1]
    best = (-1.0, 0, 0, 0.0)
    for s in scales:
        tpl = grey(drawn_like(source, mode, cell, s))
        if tpl.shape[0] > part.shape[0] or tpl.shape[1] > part.shape[1]:
            continue
        m = ncc_map(part, tpl)
        y, x = np.unravel_index(int(np.argmax(m)), m.shape)
        if m[y, x] > best[0]:
            best = (float(m[y, x]), int(x) + x0, int(y) + y0, float(s))
    return best


class Session:
    """Xvfb + xterm (VT340, 256 colour registers) running `blindspot tui`."""

    def __init__(self, home: Path, display: int, graphics: str) -> None:
        self.env = {**os.environ, "DISPLAY": f":{display}"}
        self.xvfb = subprocess.Popen(["Xvfb", f":{display}", "-screen", "0", "1400x900x24"], stderr=subprocess.DEVNULL)
        time.sleep(1.0)
        script = home / "run.sh"
        script.write_text(
            "#!/bin/sh\n"
            f"cd {home}\n"
            f"export XDG_CONFIG_HOME={home / 'config'} BLINDSPOT_CACHE={home / 'cache'} PYTHONPATH={ROOT}\n"
            "export COLORTERM=truecolor\n"  # xterm draws 24-bit colour; Textual would use 256 colours otherwise
            "unset COLUMNS LINES\n"  # set under pytest: the app would believe the terminal is 80 columns wide
            f"exec {sys.executable} -m blindspot tui --graphics {graphics}\n"
        )
        script.chmod(0o755)
        self.xterm = subprocess.Popen(
            ["xterm", "-ti", "vt340", "-xrm", "XTerm*numColorRegisters: 256", "-xrm", "XTerm*decTerminalID: vt340",
             "-fa", "DejaVu Sans Mono", "-fs", str(FONT_SIZE), "-geometry", f"{COLS}x{ROWS}+0+0", "-e", str(script)],
            env=self.env,
        )  # fmt: skip
        time.sleep(1.0)
        self.run("xdotool", "mousemove", "300", "300")  # no window manager: the keyboard goes where the pointer is

    def run(self, *argv: str) -> str:
        return subprocess.run(argv, env=self.env, capture_output=True, text=True, check=False).stdout

    def window(self) -> tuple[int, int, int, int]:
        """(x, y, width, height) of the xterm window."""
        wid = self.run("xdotool", "search", "--class", "xterm").split()[0]
        info = self.run("xwininfo", "-id", wid) if shutil.which("xwininfo") else ""
        geo = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in info.splitlines()) if v}
        try:
            return (int(geo["Absolute upper-left X"]), int(geo["Absolute upper-left Y"]),
                    int(geo["Width"]), int(geo["Height"]))  # fmt: skip
        except KeyError:
            return (0, 0, 964, 604)

    def keys(self, text: str) -> None:
        self.run("xdotool", "type", "--delay", "80", text)

    def shot(self, path: Path) -> np.ndarray:
        full = path.with_suffix(".full.png")
        self.run("import", "-window", "root", str(full))
        x, y, w, h = self.window()
        with Image.open(full) as img:
            img.convert("RGB").crop((x, y, x + w, y + h)).save(path)
        full.unlink()
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))

    def close(self) -> None:
        self.keys("q")
        time.sleep(1.0)
        for proc in (self.xterm, self.xvfb):
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()


def wait_for(path_glob: tuple[Path, str], timeout: float, again=None, every: float = 8.0) -> Path:
    """The newest file matching the glob, once there is one; `again()` is called every `every` seconds
    until then (a key pressed before the app was ready is lost)."""
    root, pattern = path_glob
    start = time.monotonic()
    last = start
    while time.monotonic() < start + timeout:
        found = sorted(root.glob(pattern))
        if found:
            return found[-1]
        if again is not None and time.monotonic() - last > every:
            again()
            last = time.monotonic()
        time.sleep(0.5)
    raise TimeoutError(f"nothing matched {root}/{pattern} after {timeout:g} s")


def check_row(shot: np.ndarray, sources: list[np.ndarray], mode: str, cell: tuple[int, int], what: str) -> list[str]:
    """Each source found side by side (left to right, on one row) with correlation ≥ THRESHOLD."""
    g = grey(shot)
    problems, report, x, y = [], [], 0, None
    for k, source in enumerate(sources):
        region = (
            (x, 0, g.shape[1], g.shape[0])
            if y is None
            else (x, max(0, y - 4), g.shape[1], min(g.shape[0], y + 4 + 4 * source.shape[0] * 4))
        )
        c, fx, fy, s = find(g, source, mode, cell, region)
        report.append(f"{what}[{k}] corr {c:.3f} at ({fx},{fy}) scale {s:g}")
        if c < THRESHOLD:
            problems.append(report[-1])
        if y is not None and abs(fy - y) > 4:
            problems.append(f"{what}[{k}] is not on the row of the first tile ({fy} vs {y})")
        x, y = fx + 1, fy if y is None else y
    print("\n".join(report))
    return problems


def check_mode(mode: str, out: Path, display: int) -> list[str]:
    import torch  # noqa: F401  (safetensors' torch loader)
    from safetensors.torch import load_file

    from engines.core.data import mnist_files, read_idx
    from engines.report.figures import to_uint8
    from screens.pictures import difference_picture

    home = Path(tempfile.mkdtemp(prefix=f"terminal-check-{mode}-"))
    (home / "config" / "blindspot").mkdir(parents=True)
    settings = {"runs_dir": str(home / "runs"), "device": "cpu", "attack": {"n": 8, "c_steps": 2, "max_iter": 10}}
    (home / "config" / "blindspot" / "workbench.json").write_text(json.dumps(settings))
    session = Session(home, display, "auto" if mode == "sixel" else "halfblock")
    problems: list[str] = []
    try:
        x, y, w, h = session.window()
        cell = (w // COLS, h // ROWS)
        time.sleep(6.0)  # the app starts (torch import)
        session.keys("2")
        units_file = wait_for((home / "runs", "units-*/units.json"), 180, lambda: session.keys("2"))
        time.sleep(5.0)
        shot = session.shot(out / f"gallery-{mode}.png")
        units = json.loads(units_file.read_text())["all"]["units"]
        first = next(r for r, dead in enumerate(units["degenerate"]) if not dead)
        images = read_idx(next(p for k, p in mnist_files().items() if "test" in k and "image" in k))
        problems += check_row(shot, [images[i] for i in units["top"][first][:3]], mode, cell, f"{mode} gallery")

        session.keys("3")
        time.sleep(2.0)
        session.keys("s")
        # no second `s`: the attack may finish in under a second, and a second run would not be the one shown
        wait_for((home / "runs", "attack-*/run.json"), 60)
        summary = wait_for((home / "runs", "attack-*/summary.json"), 240)
        time.sleep(4.0)
        runs = sorted((home / "runs").glob("attack-*/summary.json"))
        if len(runs) != 1:
            return problems + [f"{mode}: {len(runs)} attack runs were started, expected one"]
        shot = session.shot(out / f"attack-{mode}.png")
        samples = load_file(str(summary.parent / "samples.safetensors"))
        ok = samples["success"].bool().nonzero().flatten().tolist()
        if not ok:
            return problems + [f"{mode}: the attack found no example to check"]
        i = ok[0]
        x0, xa = samples["x"][i], samples["x_adv"][i]
        triplet = [to_uint8(x0), difference_picture(x0, xa)[0], to_uint8(xa)]
        problems += check_row(shot, triplet, mode, cell, f"{mode} attack")
    finally:
        session.close()
        shutil.rmtree(home, ignore_errors=True)
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots" / "terminal")
    parser.add_argument("--modes", default="sixel,halfblock")
    parser.add_argument("--display", type=int, default=93)
    args = parser.parse_args()
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        print(f"missing {', '.join(missing)}: run scripts/terminal_check.sh (it installs them)", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    problems = []
    for k, mode in enumerate(args.modes.split(",")):
        problems += check_mode(mode, args.out, args.display + k)
    print(
        "\n".join(problems) if problems else f"all tiles match (correlation ≥ {THRESHOLD}); screenshots in {args.out}"
    )
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
