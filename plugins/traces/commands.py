"""``xpusim traces list`` and ``xpusim traces fetch NAME``: the public request traces.

The registry is :mod:`xpusim.engine.tracereg`; this module is only its command line. The
group is added to every ``xpusim`` command line, so it imports only typer at import time.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

traces_app = typer.Typer(
    name="traces",
    help="Public LLM request traces: list them, download and verify one.",
    no_args_is_help=True,
    add_completion=False,
)


@traces_app.command("list")
def list_traces(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """List the registered traces with their source, licence, size and cache state."""
    from rich.console import Console
    from rich.table import Table

    from xpusim.engine import tracereg
    from xpusim.engine.cli import guarded

    def go() -> None:
        rows = [
            {
                "name": e.name,
                "title": e.title,
                "url": e.url,
                "licence": e.licence,
                "format": e.format,
                "size_bytes": e.size_bytes,
                "sha256": e.sha256,
                "checksum_source": e.checksum_source,
                "cached": tracereg.status(e),
                "path": str(tracereg.cached_path(e)),
            }
            for e in tracereg.registry().values()
        ]
        console = Console(soft_wrap=True)
        if as_json:
            console.print_json(json.dumps(rows))
            return
        t = Table(title=f"public request traces (cache: {tracereg.cache_dir()})")
        for c in ("name", "licence", "size", "sha256", "cached", "url"):
            t.add_column(c, overflow="fold")
        for r in rows:
            size = r["size_bytes"]
            t.add_row(
                str(r["name"]),
                str(r["licence"]),
                f"{size / 1e6:.1f} MB" if isinstance(size, int) else "pinned on first fetch",
                str(r["sha256"] or "pinned on first fetch")[:16],
                str(r["cached"]),
                str(r["url"]),
            )
        console.print(t)

    guarded(go)


@traces_app.command("fetch")
def fetch_trace(
    name: Annotated[str, typer.Argument(help="A trace name from `xpusim traces list`.")],
    force: Annotated[
        bool, typer.Option("--force", help="Download again even if a verified copy is cached.")
    ] = False,
) -> None:
    """Download a trace into the cache folder and verify its size and sha256."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TransferSpeedColumn,
    )

    from xpusim.engine import tracereg
    from xpusim.engine.cli import guarded

    def go() -> None:
        e = tracereg.entry(name, "xpusim traces fetch")
        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            transient=True,
        ) as bar:
            task = bar.add_task(e.name, total=e.size_bytes)

            def show(done: int, total: int | None) -> None:
                bar.update(task, completed=done, total=total)

            path = tracereg.fetch(name, show, force=force)
        size, sha = tracereg.file_sha256(path)
        how = (
            "verified against the registry"
            if e.sha256
            else "checked against the pin of its first download"
        )
        typer.echo(f"{e.name}: {path} ({size:,} bytes, sha256 {sha}, {how})")

    guarded(go)
