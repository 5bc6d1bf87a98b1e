"""The reproduce run kind: how many of the paper's tables a reproduce folder holds, its report.md.

The file names are declared here and written by `engines.reproduce.operation` (see its docstring for the layout)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engines.core.run_index import Figures, RunKind, recorded_data
from engines.transfer.store import MATRIX_FILE

TABLES_FILE, REPORT_FILE = "tables.json", "report.md"
TABLE1_FILE, TABLE3_FILE, TABLE5_FILE, SECTION42_FILE = "table1.json", "table3.json", "table5.json", "section42.json"
TABLE_FILES = (  # each table as soon as it is finished: Tables 1–5 and the §4.2 section
    TABLE1_FILE,
    f"table2/{MATRIX_FILE}",
    TABLE3_FILE,
    f"table4/{MATRIX_FILE}",
    TABLE5_FILE,
    SECTION42_FILE,
)


def describe(folder: Path, _: dict[str, Any], __: str) -> Figures:
    tables = len(TABLE_FILES)
    if (folder / TABLES_FILE).is_file():
        return Figures(
            f"{tables} of {tables} tables" + (f" · {REPORT_FILE}" if (folder / REPORT_FILE).is_file() else "")
        )
    return Figures(f"{sum((folder / part).is_file() for part in TABLE_FILES)} of {tables} tables")


def paper_zoo(_: dict[str, Any]) -> str:
    return "paper zoo"


def data_name(record: dict[str, Any]) -> str:
    """The data set without a split: reproduce uses both."""
    return recorded_data(record, split=False)


REPRODUCE = RunKind(
    "reproduce", report_files=(REPORT_FILE, TABLES_FILE), describe=describe, model=paper_zoo, data=data_name
)
