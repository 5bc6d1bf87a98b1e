"""`blindspot data check|download`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from blindspot.console import note, print_json
from blindspot.console import out as stdout_console
from blindspot.options import DataDir, Json
from engines.core.data import (
    PAPER_SPLIT_SEED,
    dataset_identity,
    default_mnist_dir,
    download_mnist,
    load_split,
    mnist_files,
)

data_app = typer.Typer(help="Check or fetch the MNIST data.", no_args_is_help=True)


@data_app.command("check")
def check(data: DataDir = None, json_out: Json = False) -> None:
    """Verify the IDX files (magic numbers, counts, labels, image shapes) and print what they are and their md5s."""
    counts = {s: len(load_split(s, data)) for s in ("train", "test", "p1", "p2")}  # every check `train` relies on
    identity = dataset_identity(data)
    files = mnist_files(data)
    report = {
        "folder": str(data or default_mnist_dir()),
        "name": identity["name"],
        "image_shape": identity["image_shape"],
        "classes": identity["classes"],
        "counts": counts,
        "md5": identity["md5s"],
        "files": {role: str(path) for role, path in sorted(files.items())},
    }
    if json_out:
        print_json(report)
        return
    shape = "×".join(str(d) for d in identity["image_shape"][1:])
    title = f"{identity['name']} in {report['folder']}: {identity['classes']} classes, {shape} images"
    table = Table(title=Text(title))  # a Text: paths may hold brackets that Rich would read as markup
    for col, justify in (("split", "left"), ("images", "right"), ("from", "left"), ("md5", "left")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    folder = Path(report["folder"])
    for split in ("train", "test"):
        for kind in ("images", "labels"):
            role = f"{split}-{kind}"
            count = str(counts[split]) if kind == "images" else ""
            table.add_row(
                split if kind == "images" else "", count, Text(_relative(files[role], folder)), identity["md5s"][role]
            )
    for split in ("p1", "p2"):
        table.add_row(split, str(counts[split]), f"half of train (seed {PAPER_SPLIT_SEED})", "")
    stdout_console.print(table)


def _relative(path: Path, folder: Path) -> str:
    """The file as found under the checked folder (MNIST/raw/..., FashionMNIST/raw/...)."""
    return str(path.relative_to(folder)) if path.is_relative_to(folder) else str(path)


@data_app.command("download")
def download(to: Annotated[Path, typer.Option("--to", help="Target folder.")] = Path("data")) -> None:
    """Fetch MNIST through torchvision (needs internet); offline, says where to put the files."""
    folder = download_mnist(to)
    note(f"MNIST files in {folder}; use --data {to}")


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
