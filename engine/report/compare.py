"""One report over several run folders (``xpusim compare RUN_DIR ...``).

:func:`load_run` reads a run folder back into a :class:`~xpusim.engine.results.RunResult`:
``summary.json`` for the systems and their metrics, the event frames' Parquet files, and
``report-data.json`` (written beside ``report.html``) for each system's figures and
economics details and the run's metric vocabulary. :func:`merge_runs` puts the systems of several runs side by side,
prefixing a name with its run's folder name where two runs use the same one, and
:func:`compare_runs` writes the merged report.
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl

from xpusim.engine.device import Figure
from xpusim.engine.errors import XpusimError
from xpusim.engine.frames import Frame, frame_columns, frame_height, spill_rows
from xpusim.engine.metrics import SYSTEM_KEYS, Metric, Vocabulary, engine_vocabulary
from xpusim.engine.report.html import render_html
from xpusim.engine.report.markdown import render_markdown
from xpusim.engine.results import FRAME_NAMES, RunResult, SystemResult, _jsonable

REPORT_DATA = "report-data.json"
"""The file that carries each system's figures and economics details, and the run's metric
vocabulary, beside the report."""


def report_data(run: RunResult) -> dict[str, Any]:
    """Each system's figures (value, source, assumption, date) and details, and the run's metric
    vocabulary, as JSON data."""
    return {
        "scenario": run.scenario,
        "metrics": run.vocabulary.to_json(),
        "systems": {
            s.name: {
                "figures": {
                    k: {
                        "value": f.value,
                        "source": f.source,
                        "assumption": f.assumption,
                        "date": f.date or None,
                    }
                    for k, f in sorted(s.figures.items())
                },
                "details": _jsonable(s.details),
            }
            for s in run.systems
        },
    }


def write_report_data(run: RunResult, folder: Path) -> str:
    """Write :data:`REPORT_DATA` into ``folder`` and return its name."""
    doc = json.dumps(report_data(run), indent=1, sort_keys=True, allow_nan=False)
    (folder / REPORT_DATA).write_text(doc + "\n", encoding="utf-8")
    return REPORT_DATA


def load_run(folder: Path | str) -> RunResult:
    """The run in ``folder`` (a folder ``xpusim run`` wrote) as a RunResult."""
    folder = Path(folder)
    summary = folder / "summary.json"
    if not summary.is_file():
        raise XpusimError(
            f"{folder}: not a run folder (no summary.json); give folders that `xpusim run` "
            f"wrote, such as results/<name>-<timestamp>/."
        )
    try:
        doc = json.loads(summary.read_text(encoding="utf-8"))
        raw_systems = list(doc["systems"])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise XpusimError(f"{summary}: not a valid summary.json ({exc}).") from None
    extra: dict[str, Any] = {}
    data: dict[str, Any] = {}
    data_file = folder / REPORT_DATA
    if data_file.is_file():
        try:
            data = json.loads(data_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise XpusimError(f"{data_file}: not valid JSON ({exc}).") from None
        extra = data.get("systems", {})
    vocabulary = _vocabulary(data, raw_systems, data_file)
    # read when small; past the spill threshold scanned (a LazyFrame), so a large run's
    # frames stay on disk and reports query them lazily
    frames: dict[str, Frame] = {}
    for name in FRAME_NAMES:
        path = folder / f"{name}.parquet"
        if path.is_file():
            scan = pl.scan_parquet(path)
            frames[name] = scan if frame_height(scan) > spill_rows() else scan.collect()
    systems = []
    for raw in raw_systems:
        name = str(raw["name"])
        more = extra.get(name, {})
        figures = {
            k: Figure(
                float(v["value"]),
                str(v.get("source", "")),
                str(v.get("assumption", "")),
                str(v.get("date") or ""),
            )
            for k, v in more.get("figures", {}).items()
        }
        systems.append(
            SystemResult(
                name=name,
                backend=str(raw.get("backend", "")),
                device=str(raw.get("device", "")),
                count=int(raw.get("count", 0)),
                status=str(raw.get("status", "ok")),
                reason=str(raw.get("reason", "")),
                metrics={k: v for k, v in raw.items() if k not in SYSTEM_KEYS},
                frames={
                    k: f.filter(pl.col("system") == name)
                    for k, f in frames.items()
                    if "system" in frame_columns(f)
                },
                figures=figures,
                details=dict(more.get("details", {})),
            )
        )
    return RunResult(
        scenario=str(doc.get("scenario", folder.name)),
        seed=int(doc.get("seed", 0)),
        version=str(doc.get("xpusim_version", "")),
        systems=systems,
        workload=str(doc.get("workload", "")),
        model=str(doc.get("model", "")),
        vocabulary=vocabulary,
    )


def _vocabulary(data: dict[str, Any], systems: list[Any], where: Path) -> Vocabulary:
    """The vocabulary a run folder recorded; for a folder written before runs recorded
    one, the engine's metrics plus every other numeric key as a plain row (no direction)."""
    if "metrics" in data:
        try:
            return Vocabulary.from_json(data["metrics"])
        except (TypeError, ValueError) as exc:
            raise XpusimError(f"{where}: not a valid metric vocabulary ({exc}).") from None
    vocab = engine_vocabulary()
    seen = {
        k
        for raw in systems
        for k, v in dict(raw).items()
        if k not in SYSTEM_KEYS and isinstance(v, int | float) and not isinstance(v, bool)
    }
    return vocab.extend(
        Metric(k, k, order=800, table=False) for k in sorted(seen) if k not in vocab
    )


def merge_runs(runs: Sequence[RunResult], labels: Sequence[str]) -> RunResult:
    """The systems of ``runs`` side by side; a system name used by more than one run gets
    its run's label as a prefix (``label/name``) in every run that uses it."""
    if len(runs) != len(labels):
        raise ValueError(f"{len(runs)} runs but {len(labels)} labels")
    uses = Counter(s.name for r in runs for s in r.systems)
    systems: list[SystemResult] = []
    for run, label in zip(runs, labels, strict=True):
        for s in run.systems:
            name = f"{label}/{s.name}" if uses[s.name] > 1 else s.name
            frames = {k: f.with_columns(pl.lit(name).alias("system")) for k, f in s.frames.items()}
            systems.append(
                SystemResult(
                    name=name,
                    backend=s.backend,
                    device=s.device,
                    count=s.count,
                    status=s.status,
                    reason=s.reason,
                    metrics=dict(s.metrics),
                    frames=frames,
                    figures=dict(s.figures),
                    details=dict(s.details),
                )
            )

    def joined(values: list[str]) -> str:
        return ", ".join(dict.fromkeys(v for v in values if v))

    return RunResult(
        scenario=f"comparison of {joined([r.scenario for r in runs])}",
        seed=runs[0].seed if runs else 0,
        version=joined([r.version for r in runs]),
        systems=systems,
        workload=joined([r.workload for r in runs]),
        model=joined([r.model for r in runs]),
        vocabulary=functools.reduce(
            Vocabulary.merge, (r.vocabulary for r in runs), engine_vocabulary()
        ),
    )


def compare_runs(folders: Sequence[Path | str], out_file: Path | str) -> Path:
    """Merge the runs in ``folders`` into one report at ``out_file`` (HTML, or Markdown when
    the name ends in ``.md``) and return its path."""
    if not folders:
        raise XpusimError("compare needs at least one run folder.")
    paths = [Path(f) for f in folders]
    runs = [load_run(p) for p in paths]
    names = [p.resolve().name for p in paths]
    counts = Counter(names)
    labels = [n if counts[n] == 1 else f"{n}#{i + 1}" for i, n in enumerate(names)]
    merged = merge_runs(runs, labels)
    out = Path(out_file)
    text = render_markdown(merged) if out.suffix.lower() == ".md" else render_html(merged)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise XpusimError(f"cannot write the comparison to {out}: {exc.strerror}.") from None
    return out
