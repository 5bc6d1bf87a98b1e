"""A scripted terminal for `blindspot tui` in a real pty: answers its queries, records what it draws.

The terminal answers DA1 the way a chosen terminal would (a VT340 with sixel: `ESC [ ? 6 2 ; 4 c`),
the cell-size query with 10×20 pixels, and ignores the kitty query (as a terminal without it does).
`sixel_images` finds every sixel image in the output with where it was drawn; `decode_sixel` turns one
back into pixels (written from the DEC format, independently of textual-image's encoder).
"""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import struct
import sys
import termios
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
SIXEL_DA1 = b"\x1b[?62;4c"
PLAIN_DA1 = b"\x1b[?62;1;6c"  # a VT220-like answer: no sixel
CELL = (10, 20)
_SIXEL = re.compile(rb"\x1b\[(\d+);(\d+)H\x1bP[0-9;]*q(.*?)\x1b\\", re.S)


@dataclass
class SixelImage:
    row: int  # 1-based cell position of the top-left corner (the cursor move before it)
    col: int
    data: bytes  # from the raster attributes on, without the string terminator

    @property
    def size(self) -> tuple[int, int]:
        m = re.match(rb'"\d+;\d+;(\d+);(\d+)', self.data)
        return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def sixel_images(output: bytes) -> list[SixelImage]:
    """Every sixel image in `output` that the app placed with a cursor move just before it."""
    return [SixelImage(int(m.group(1)), int(m.group(2)), m.group(3)) for m in _SIXEL.finditer(output)]


def decode_sixel(data: bytes) -> np.ndarray:
    """Pixels (H, W, 3) uint8 of a sixel image body: colour definitions `#n;2;r;g;b` (percent, selecting
    the colour too), colour selection `#n`, repeats `!count`, carriage return `$`, next band `-`, data characters `?`…`~`."""
    size = re.match(rb'"\d+;\d+;(\d+);(\d+)', data)
    assert size, "no raster attributes"
    width, height = int(size.group(1)), int(size.group(2))
    out = np.zeros((height + 6, width, 3), np.uint8)
    colours: dict[int, tuple[int, int, int]] = {}
    colour, x, band, i = (0, 0, 0), 0, 0, size.end()
    while i < len(data):
        c = data[i]
        if c == ord("#"):
            m = re.match(rb"#(\d+)(?:;2;(\d+);(\d+);(\d+))?", data[i:])
            assert m
            n = int(m.group(1))
            if m.group(2) is not None:  # a definition also selects the colour
                colours[n] = tuple(round(int(m.group(k)) * 255 / 100) for k in (2, 3, 4))  # type: ignore[assignment]
            colour = colours[n]
            i += m.end()
            continue
        repeat = 1
        if c == ord("!"):
            m = re.match(rb"!(\d+)", data[i:])
            assert m
            repeat, i = int(m.group(1)), i + m.end()
            c = data[i]
        if c == ord("$"):
            x = 0
        elif c == ord("-"):
            x, band = 0, band + 1
        elif 63 <= c <= 126:
            bits = c - 63
            for dy in range(6):
                if bits >> dy & 1:
                    out[band * 6 + dy, x : x + repeat] = colour
            x += repeat
        i += 1
    return out[:height, :width]


class Terminal:
    """`argv` in a pty of `cols`×`rows` cells; `da1` is the answer to DA1 (None: the terminal stays silent)."""

    def __init__(
        self,
        argv: list[str],
        cols: int,
        rows: int,
        env: dict[str, str],
        cwd: Path,
        da1: bytes | None = SIXEL_DA1,
        answer_delay: float = 0.0,
    ) -> None:
        self.da1, self.answer_delay, self.output = da1, answer_delay, bytearray()
        self._seen: dict[bytes, int] = {}
        self.pending: list[tuple[float, bytes]] = []
        pid, fd = pty.fork()
        if pid == 0:  # the child: the app
            try:
                os.chdir(cwd)
                os.execve(argv[0], argv, env)
            finally:
                os._exit(127)
        self.pid, self.fd, self.status = pid, fd, None
        import fcntl

        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def _answer(self) -> None:
        """Queue an answer to every query written since the last look (a query may span two reads)."""
        replies = {b"\x1b[16t": b"\x1b[6;%d;%dt" % (CELL[1], CELL[0]), b"\x1b[c": self.da1}
        for query, reply in replies.items():
            pos = self.output.find(query, self._seen.get(query, 0))
            while pos >= 0:
                if reply is not None:
                    self.pending.append((time.monotonic() + self.answer_delay, reply))
                self._seen[query] = pos + len(query)
                pos = self.output.find(query, self._seen[query])

    def pump(self, seconds: float = 0.05) -> None:
        """Read what the app wrote for `seconds`, answering its queries (after `answer_delay`)."""
        end = time.monotonic() + seconds
        while True:
            now = time.monotonic()
            for item in [p for p in self.pending if p[0] <= now]:
                self.pending.remove(item)
                os.write(self.fd, item[1])
            left = end - now
            if left <= 0:
                return
            ready, _, _ = select.select([self.fd], [], [], min(left, 0.02))
            if ready:
                try:
                    chunk = os.read(self.fd, 1 << 16)
                except OSError:  # the app exited
                    return
                self.output += chunk
                self._answer()

    def send(self, keys: str | bytes) -> None:
        os.write(self.fd, keys.encode() if isinstance(keys, str) else keys)

    def wait_for(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline or not self.alive():
                tail = bytes(self.output[-600:])
                raise AssertionError(f"timed out after {timeout:g} s waiting for {what}; last output {tail!r}")
            self.pump(0.1)

    def alive(self) -> bool:
        if self.status is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                pid, status = self.pid, -1
            if pid:
                self.status = status
        return self.status is None

    def close(self) -> None:
        """q quits the app; the process is killed if it does not."""
        if self.alive():
            self.send("q")
            deadline = time.monotonic() + 10
            while self.alive() and time.monotonic() < deadline:
                self.pump(0.1)
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)
            self.status = os.waitpid(self.pid, 0)[1]
        os.close(self.fd)


def tui_argv(*options: str) -> list[str]:
    return [sys.executable, "-m", "blindspot", "tui", *options]


def tui_env(home: Path) -> dict[str, str]:
    """The environment of a test session: its own config, cache and runs, a known terminal type."""
    env = {k: v for k, v in os.environ.items() if k not in ("TMUX", "TEXTUAL", "COLUMNS", "LINES")}
    env.update(
        TERM="xterm-256color",
        XDG_CONFIG_HOME=str(home / "config"),
        BLINDSPOT_CACHE=str(home / "cache"),
        PYTHONPATH=str(ROOT),
        COLORTERM="truecolor",
    )
    return env
