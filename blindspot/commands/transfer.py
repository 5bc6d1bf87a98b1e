"""Placeholder until its engine lands."""

import typer


def register(app: typer.Typer) -> None:
    pass
