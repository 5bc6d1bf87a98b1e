"""`blindspot data check|download`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from blindspot.console import note, print_json
from blindspot.options import DataDir, Json
from engines.core.data import data_fingerprint, default_mnist_dir, download_mnist, load_split

data_app = typer.Typer(help="Check or fetch the MNIST data.", no_args_is_help=True)


@data_app.command("check")
def check(data: DataDir = None, json_out: Json = False) -> None:
    """Verify the IDX files (magic numbers, counts) and print their md5s."""
    counts = {s: len(load_split(s, data)) for s in ("train", "test", "p1", "p2")}
    report = {"folder": str(data or default_mnist_dir()), "counts": counts, "md5": data_fingerprint(data)}
    if json_out:
        print_json(report)
    else:
        note(f"MNIST in {report['folder']}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


@data_app.command("download")
def download(to: Annotated[Path, typer.Option("--to", help="Target folder.")] = Path("data")) -> None:
    """Fetch MNIST through torchvision (needs internet); offline, says where to put the files."""
    folder = download_mnist(to)
    note(f"MNIST files in {folder}; use --data {to}")


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
