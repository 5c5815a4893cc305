"""``looplane config show``: the resolved configuration and where each value came from.

It takes the worker's overriding flags too, so a user can see what a worker started with
the same flags, environment and files would run with. Secrets are masked in every format.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any

import tomli_w
import typer
from rich import box
from rich.table import Table
from rich.text import Text

from looplane.cli._common import (
    AppOption,
    ConcurrencyOption,
    ConfigFileOption,
    DbPathOption,
    SourceFlags,
    StorageOption,
    load,
)
from looplane.cli._output import stdout_console
from looplane.config import to_document

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

    from looplane.config import LoadedSettings

__all__ = ["OutputFormat", "config_app", "show"]

config_app = typer.Typer(
    name="config", help="Inspect the resolved configuration.", no_args_is_help=True
)


class OutputFormat(StrEnum):
    """How `show` prints the settings."""

    TOML = "toml"
    JSON = "json"


FormatOption = Annotated[
    OutputFormat | None,
    typer.Option(
        "--format",
        help="Print the settings as a TOML or JSON document instead of the table of sources.",
        show_default=False,
    ),
]


@config_app.command("show")
def show(
    config_file: ConfigFileOption = None,
    output_format: FormatOption = None,
    app: AppOption = None,
    concurrency: ConcurrencyOption = None,
    storage: StorageOption = None,
    db_path: DbPathOption = None,
) -> None:
    """Print every setting with its value and where it came from (default, file, env, flag).

    With --format, print the settings as a document that can serve as a config file.
    Secrets are masked.
    """
    loaded = load(SourceFlags(config_file, app, concurrency, storage, db_path))
    document = to_document(loaded.settings)
    if output_format is OutputFormat.TOML:
        typer.echo(tomli_w.dumps(document), nl=False)
    elif output_format is OutputFormat.JSON:
        typer.echo(json.dumps(document, indent=2, ensure_ascii=False))
    else:
        stdout_console().print(_sources_table(loaded, document))


def _sources_table(loaded: LoadedSettings, document: Mapping[str, Any]) -> Table:
    source = f"config file: {loaded.config_file}" if loaded.config_file else "no config file"
    table = Table(
        title="Looplane configuration",
        caption=source,
        title_justify="left",
        caption_justify="left",
        box=box.SIMPLE_HEAD,
    )
    table.add_column("Key", style="bold", overflow="fold")
    table.add_column("Value", overflow="fold")
    table.add_column("Source", style="dim", overflow="fold")
    for key, value, origin in _rows(document, loaded.origins):
        table.add_row(Text(key), _render(value), Text(origin))
    return table


_MISSING = object()


def _rows(
    document: Mapping[str, Any], origins: Mapping[str, str]
) -> Iterator[tuple[str, Any, str]]:
    """Each setting as (dotted key, value, origin), in the model's order.

    The keys are those that `origins` lists, plus any the document holds under none of them.
    """
    keys = list(origins)
    keys += [key for key in _leaves(document, stop=set(keys)) if key not in origins]
    for key in keys:
        yield key, _lookup(document, key), origins.get(key, "default")


def _leaves(document: Mapping[str, Any], *, stop: set[str], prefix: str = "") -> Iterator[str]:
    for name, value in document.items():
        key = f"{prefix}{name}"
        if isinstance(value, dict) and key not in stop:
            yield from _leaves(value, stop=stop, prefix=f"{key}.")
        else:
            yield key


def _lookup(document: Mapping[str, Any], key: str) -> Any:
    value: Any = document
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _render(value: Any) -> Text:
    if value is _MISSING or value is None:
        return Text("(not set)", style="dim italic")
    if isinstance(value, bool):
        return Text("true" if value else "false")
    if isinstance(value, str):
        return Text(value)
    return Text(json.dumps(value, ensure_ascii=False))
