"""The registry of public traces: listing, verified downloads from a loopback server, the
trace cache, ``trace: {name: ...}`` in scenarios, and the Mooncake reader."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import json
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from xpusim.engine import tracereg
from xpusim.engine.errors import ScenarioError, TraceError
from xpusim.engine.host import Host
from xpusim.engine.run import read_trace
from xpusim.engine.scenario import load_scenario
from xpusim.plugins.traces.commands import traces_app
from xpusim.plugins.traces.mooncake import MooncakeTrace

from .conftest import TRACES

AZURE_CONV = "azure-llm-2023-conv"


class _Server:
    """A loopback HTTP server over a folder that counts the requests it answers."""

    def __init__(self, root: Path) -> None:
        self.hits: list[str] = []
        hits = self.hits

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                return None

            def do_GET(self) -> None:
                hits.append(self.path)
                super().do_GET()

        self.httpd = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(Handler, directory=str(root))
        )
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, _Server]]:
    """A folder served over loopback HTTP, and its server."""
    root = tmp_path / "www"
    root.mkdir()
    server = _Server(root)
    yield root, server
    server.close()


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty trace cache folder, set through the environment variable."""
    folder = tmp_path / "cache"
    monkeypatch.setenv(tracereg.CACHE_ENV, str(folder))
    return folder


def _point_registry(
    monkeypatch: pytest.MonkeyPatch, **changes: Callable[[tracereg.TraceEntry], tracereg.TraceEntry]
) -> None:
    """Replace entries of the registry (by name) for one test."""
    reg = dict(tracereg.registry())
    for name, change in changes.items():
        reg[name.replace("_", "-")] = change(reg[name.replace("_", "-")])
    monkeypatch.setattr(tracereg, "registry", lambda: reg)


def _write_conv(root: Path) -> bytes:
    """Put a copy of the Azure conversation trace in ``root`` (skips without it)."""
    src = TRACES / "azure_llm_2023_conv.csv"
    if not src.is_file():
        pytest.skip("the shared Azure trace is not beside the repository")
    data = src.read_bytes()
    (root / "conv.csv").write_bytes(data)
    return data


def test_every_entry_names_a_source_a_licence_and_a_reader(host: Host) -> None:
    """Each registered trace has an https URL, a licence, a citation, a registered reader,
    and either a 64-hex sha256 with its size or a statement that it is pinned on first
    download (a checksum is never left unexplained)."""
    reg = tracereg.registry()
    assert {
        "azure-llm-2023-conv",
        "azure-llm-2023-code",
        "azure-llm-2024-conv",
        "azure-llm-2024-code",
        "mooncake-conversation",
        "mooncake-toolagent",
        "mooncake-synthetic",
        "burstgpt-1",
    } <= set(reg)
    for e in reg.values():
        assert e.url.startswith("https://"), e.name
        assert e.licence and e.cite and e.title, e.name
        host.trace_formats.get(e.format)  # raises for an unregistered reader
        if e.sha256 is None:
            assert "pinned on the first verified download" in " ".join(e.checksum_source.split())
        else:
            assert re.fullmatch(r"[0-9a-f]{64}", e.sha256), e.name
            assert e.size_bytes is not None and e.size_bytes > 0, e.name


def test_checksums_of_the_shared_copies_match_the_registry(traces_dir: Path) -> None:
    """The sha256 and size the registry gives the Azure 2023 traces are those of the
    byte-for-byte copies in the shared traces folder."""
    for name, file in (
        ("azure-llm-2023-conv", "azure_llm_2023_conv.csv"),
        ("azure-llm-2023-code", "azure_llm_2023_code.csv"),
    ):
        e = tracereg.entry(name)
        assert tracereg.file_sha256(traces_dir / file) == (e.size_bytes, e.sha256)


def test_fetch_downloads_verifies_and_keeps_a_verified_copy(
    served: tuple[Path, _Server], cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fetch streams the file into the cache folder, reports progress up to its size,
    and a second fetch finds the verified copy without downloading again."""
    root, server = served
    data = _write_conv(root)
    _point_registry(
        monkeypatch,
        azure_llm_2023_conv=lambda e: dataclasses.replace(e, url=server.url("conv.csv")),
    )
    seen: list[tuple[int, int | None]] = []
    path = tracereg.fetch(AZURE_CONV, lambda done, total: seen.append((done, total)))
    assert path.parent == cache and path.read_bytes() == data
    assert seen[-1] == (len(data), len(data))
    assert tracereg.status(tracereg.entry(AZURE_CONV)) == "verified"
    assert tracereg.fetch(AZURE_CONV) == path
    assert len(server.hits) == 1
    assert not list(cache.glob("*.part"))


def test_a_download_whose_bytes_differ_is_refused_and_not_kept(
    served: tuple[Path, _Server], cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bytes whose sha256 is not the registry's raise TraceError naming both checksums,
    and nothing is left in the cache folder."""
    root, server = served
    data = bytearray(_write_conv(root))
    data[100] ^= 1  # same size, one bit flipped
    (root / "conv.csv").write_bytes(bytes(data))
    _point_registry(
        monkeypatch,
        azure_llm_2023_conv=lambda e: dataclasses.replace(e, url=server.url("conv.csv")),
    )
    with pytest.raises(TraceError, match=r"sha256 .* the registry expects 2f1e5b66"):
        tracereg.fetch(AZURE_CONV)
    assert list(cache.iterdir()) == []


def test_a_trace_without_published_checksum_is_pinned_on_first_download(
    served: tuple[Path, _Server], cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no published sha256 the first download writes a pin; a later download of
    different bytes under the same name is refused."""
    root, server = served
    (root / "t.jsonl").write_bytes(
        b'{"timestamp": 0, "input_length": 5, "output_length": 2, "hash_ids": [1]}\n'
    )
    _point_registry(
        monkeypatch,
        mooncake_synthetic=lambda e: dataclasses.replace(e, url=server.url("t.jsonl")),
    )
    path = tracereg.fetch("mooncake-synthetic")
    pin = json.loads((cache / "mooncake-synthetic.pin.json").read_text())
    assert pin["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    (root / "t.jsonl").write_bytes(
        b'{"timestamp": 0, "input_length": 6, "output_length": 2, "hash_ids": [1]}\n'
    )
    with pytest.raises(TraceError, match="registry expects"):
        tracereg.fetch("mooncake-synthetic", force=True)
    assert path.read_bytes().startswith(b'{"timestamp": 0, "input_length": 5')


def test_unreachable_server_and_http_errors_say_how_to_go_on(
    served: tuple[Path, _Server], cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A missing file (HTTP 404) raises TraceError with the way to use a local copy."""
    _, server = served
    _point_registry(
        monkeypatch,
        azure_llm_2023_conv=lambda e: dataclasses.replace(e, url=server.url("gone.csv")),
    )
    with pytest.raises(TraceError, match=r"HTTP 404.*trace: \{path: FILE, format: azure-llm\}"):
        tracereg.fetch(AZURE_CONV)


def test_unknown_name_lists_the_registry_and_the_nearest() -> None:
    """An unknown trace name raises with the nearest registered name."""
    with pytest.raises(TraceError, match="Did you mean 'burstgpt-1'"):
        tracereg.entry("burstgpt")


SCENARIO = """
name: named-trace
model: {family: llama, preset: llama-2-7b, dtype: bf16}
workload:
  kind: serving
  trace: TRACE
systems:
  - {name: h100, backend: gpu, device: h100-sxm, count: 1}
"""


def test_a_scenario_names_a_trace_and_reads_the_cached_copy(
    served: tuple[Path, _Server],
    cache: Path,
    monkeypatch: pytest.MonkeyPatch,
    host: Host,
    write_yaml: Callable[[str, str], Path],
) -> None:
    """``trace: {name: ..., limit: N}`` downloads the trace on first use and reads the
    first N requests of the verified copy with the registry's reader."""
    root, server = served
    _write_conv(root)
    _point_registry(
        monkeypatch,
        azure_llm_2023_conv=lambda e: dataclasses.replace(e, url=server.url("conv.csv")),
    )
    path = write_yaml(SCENARIO.replace("TRACE", "{name: azure-llm-2023-conv, limit: 50}"), "s.yaml")
    sc = load_scenario(path, host)
    (spec,) = sc.workload.traces(sc.workload_config)
    assert spec["format"] == "azure-llm" and spec["limit"] == 50
    assert Path(spec["path"]).parent == cache
    read_trace(sc, host)
    assert len(server.hits) == 1


@pytest.mark.parametrize(
    ("trace", "message"),
    [
        ("{name: azure-conv}", "unknown trace 'azure-conv'"),
        ("{name: azure-llm-2023-conv, path: x.csv}", "drop path"),
        ("{limit: 5}", "give `path` and `format`"),
    ],
)
def test_bad_trace_names_are_refused_at_load(
    host: Host, write_yaml: Callable[[str, str], Path], trace: str, message: str
) -> None:
    """An unknown name, a name with a file, or neither is a ScenarioError at load."""
    path = write_yaml(SCENARIO.replace("TRACE", trace), "bad.yaml")
    with pytest.raises(ScenarioError, match=re.escape(message)):
        load_scenario(path, host)


def test_a_corrupt_cached_copy_is_refused_with_the_fix(cache: Path) -> None:
    """A cached file that fails its check is not read: the error says to fetch again."""
    cache.mkdir()
    e = tracereg.entry(AZURE_CONV)
    tracereg.cached_path(e).write_bytes(b"TIMESTAMP,ContextTokens,GeneratedTokens\n")
    with pytest.raises(TraceError, match="traces fetch azure-llm-2023-conv --force"):
        tracereg.local_trace(AZURE_CONV)


def test_cli_fetch_and_list(
    served: tuple[Path, _Server], cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``traces fetch`` prints the verified path; ``traces list --json`` shows it cached;
    an unknown name exits 2."""
    root, server = served
    _write_conv(root)
    _point_registry(
        monkeypatch,
        azure_llm_2023_conv=lambda e: dataclasses.replace(e, url=server.url("conv.csv")),
    )
    runner = CliRunner()
    res = runner.invoke(traces_app, ["fetch", AZURE_CONV])
    assert res.exit_code == 0, res.output
    assert "verified" in res.output and str(cache) in res.output
    res = runner.invoke(traces_app, ["list", "--json"])
    rows = {r["name"]: r for r in json.loads(res.output)}
    assert rows[AZURE_CONV]["cached"] == "verified"
    assert rows["burstgpt-1"]["cached"] == "absent"
    res = runner.invoke(traces_app, ["fetch", "nope"])
    assert res.exit_code == 2


def test_the_traces_command_is_on_the_command_line(tmp_path: Path) -> None:
    """``xpusim traces list`` runs from the console entry point (the plugin adds it)."""
    env = {"XPUSIM_TRACE_CACHE": str(tmp_path), "PATH": "/usr/bin:/bin", "COLUMNS": "200"}
    res = subprocess.run(
        [sys.executable, "-m", "xpusim.engine.cli", "traces", "list", "--json"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert {r["name"] for r in json.loads(res.stdout)} == set(tracereg.registry())


MOONCAKE_ROWS = [
    {"timestamp": 0, "input_length": 600, "output_length": 3, "hash_ids": [0, 1]},
    {"timestamp": 1500, "input_length": 512, "output_length": 1, "hash_ids": [0]},
    {"timestamp": 3000, "input_length": 1100, "output_length": 7, "hash_ids": [0, 1, 2]},
]


def _jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_mooncake_reader_keeps_hashes_and_times_in_seconds(tmp_path: Path) -> None:
    """Millisecond timestamps become seconds; each request keeps its block hashes."""
    df = MooncakeTrace().read(_jsonl(tmp_path / "m.jsonl", MOONCAKE_ROWS), {})
    assert df["arrival_s"].to_list() == [0.0, 1.5, 3.0]
    assert df["prompt_tokens"].to_list() == [600, 512, 1100]
    assert df["hash_ids"].to_list() == [[0, 1], [0], [0, 1, 2]]
    assert df.schema["hash_ids"] == pl.List(pl.Int64)


def test_mooncake_hashes_of_another_block_size_are_refused(tmp_path: Path) -> None:
    """A hash list whose length does not match the declared block size names the line
    and the option to set."""
    path = _jsonl(tmp_path / "m.jsonl", MOONCAKE_ROWS)
    with pytest.raises(TraceError, match=r"line 1: 2 block hashes .* blocks of 256 tokens make 3"):
        MooncakeTrace().read(path, {"block_tokens": 256})


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"timestamp": 0, "input_length": 5}], "lacks output_length, hash_ids"),
        ([MOONCAKE_ROWS[2], MOONCAKE_ROWS[0]], "line 2: the timestamp goes back"),
        ([{**MOONCAKE_ROWS[0], "output_length": 0}], "line 1: input_length and output_length"),
    ],
)
def test_mooncake_bad_rows(tmp_path: Path, rows: list[dict[str, object]], message: str) -> None:
    """Missing fields, decreasing times and zero lengths raise TraceError with the line."""
    with pytest.raises(TraceError, match=message):
        MooncakeTrace().read(_jsonl(tmp_path / "m.jsonl", rows), {})


def test_the_shipped_trace_replay_reads_its_trace_by_name(
    traces_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, host: Host
) -> None:
    """scenarios/trace-replay.yaml names the Azure conversation trace; with a verified
    copy in the trace cache it reads all 19,366 requests without any network."""
    cache = tmp_path / "cache"
    cache.mkdir()
    e = tracereg.entry(AZURE_CONV)
    monkeypatch.setenv(tracereg.CACHE_ENV, str(cache))
    tracereg.cached_path(e).write_bytes((traces_dir / "azure_llm_2023_conv.csv").read_bytes())
    sc = load_scenario(
        Path(__file__).resolve().parents[1] / "scenarios" / "trace-replay.yaml", host
    )
    (spec,) = sc.workload.traces(sc.workload_config)
    frame = host.trace_formats.get(spec["format"]).read(Path(spec["path"]), {})
    assert frame.height == e.requests == 19_366
