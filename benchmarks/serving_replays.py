"""Replay the published offline serving runs that are not validation rows.

``benchmarks/serving_replays.yaml`` lists offline runs (every request sent at once) that
``benchmarks/serving_rows.yaml`` leaves out, each with its source and the loaded row whose
setup it shares (``like``). Each is run as that row's serving scenario
(:func:`validate_serving.server_scenario`: its model, GPUs, stack, scheduler and length
laws) with a ``closed`` arrival process of ``count`` clients and ``count`` requests, so
that every request is ready at 0 s as at an infinite request rate, and its output
tokens per second are compared with the published figure. The replays are reported, not
summarised with the rows: ``docs/validation.md`` quotes them and says why they are not rows.

``--scheduler`` replaces the scheduler block of every replay (a YAML mapping), to see
what another policy gives, e.g.
``--scheduler '{kind: prefill-first, max_batch: 2047, max_batch_tokens: 8192}'``.

Usage::

    python benchmarks/serving_replays.py [--only SUBSTRING] [--scheduler YAML] [--json OUT]

Exit status 0 whatever the errors; 2 when a replay names a row that does not exist or
``--scheduler`` is not a mapping.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
for path in (REPO, Path(__file__).parent):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import validate_serving as vs  # noqa: E402

from xpusim.engine.host import build_host  # noqa: E402
from xpusim.engine.scenario import resolve  # noqa: E402
from xpusim.engine.yamlsrc import Source  # noqa: E402

REPLAYS = Path(__file__).with_name("serving_replays.yaml")


def load_replays(path: Path = REPLAYS) -> list[dict[str, Any]]:
    """The replays of ``path``."""
    return list(yaml.safe_load(path.read_text(encoding="utf-8")))


def replay_scenario(
    replay: dict[str, Any], rows: dict[str, dict[str, Any]], scheduler: dict[str, Any] | None
) -> dict[str, Any]:
    """The serving scenario of ``replay``: its row's, with every request sent at once."""
    row = copy.deepcopy(rows[replay["like"]])
    if "stack" in replay:
        row["stack"] = replay["stack"]
    if scheduler is not None:
        row["scheduler"] = scheduler
    data = vs.scenario_data(row)
    count = int(replay["count"])
    arrivals = data["workload"]["arrivals"]
    arrivals.pop("rate")
    arrivals.update(process="closed", concurrency=count, count=count)
    data["name"] = f"replay-{replay['id']}"
    return data


def problems(replays: list[dict[str, Any]], rows: dict[str, dict[str, Any]]) -> list[str]:
    """Replays naming no row, each with the fix."""
    return [
        f"{REPLAYS.name}: replay {r['id']!r}: `like: {r['like']}` is no row of "
        f"{vs.ROWS.name}: name a poisson-server row whose setup the run shares"
        for r in replays
        if r.get("like") not in rows
    ]


def main(argv: list[str] | None = None) -> int:
    """Run every replay and print its error."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", help="run the replays whose id contains this")
    ap.add_argument("--scheduler", help="a YAML mapping replacing every replay's scheduler")
    ap.add_argument("--json", type=Path, help="write the replays' figures here")
    args = ap.parse_args(argv)
    scheduler = yaml.safe_load(args.scheduler) if args.scheduler else None
    if scheduler is not None and not isinstance(scheduler, dict):
        print(
            f"--scheduler {args.scheduler!r}: give a YAML mapping, e.g. '{{kind: prefill-first}}'",
            file=sys.stderr,
        )
        return 2
    rows = {r["id"]: r for r in vs.load_rows(vs.ROWS)}
    replays = [r for r in load_replays() if not args.only or args.only in r["id"]]
    bad = problems(replays, rows)
    if bad:
        print("\n".join(bad), file=sys.stderr)
        return 2
    host = build_host()
    out = []
    print(f"{'replay':48s} {'measured':>10s} {'predicted':>10s} {'error':>7s}")
    for rep in replays:
        sc = resolve(replay_scenario(rep, rows, scheduler), Source(rep["id"]), host, vs.REPO)
        res = vs.simulate(sc, host).systems[0]
        measured = float(rep["measured_output_tok_s"])
        rec: dict[str, Any] = {"id": rep["id"], "measured": measured, "status": res.status}
        if res.status != "ok":
            print(f"{rep['id']:48s} {measured:10.6g} {res.status}: {res.reason}")
        else:
            pred = float(res.metrics["throughput_tokens_per_s"])
            rec.update(predicted=pred, error=pred / measured - 1)
            print(f"{rep['id']:48s} {measured:10.6g} {pred:10.6g} {100 * rec['error']:+6.1f}%")
        out.append(rec)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"replays": out}, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
