"""Shared start-up of the fuzz harnesses: seed corpora and libFuzzer arguments.

A harness is run as ``python fuzz/fuzz_X.py [libFuzzer flags] [CORPUS_DIR ...]``, for
example ``python fuzz/fuzz_traces.py -max_total_time=60``. Without a corpus folder the
harness copies its seed files (the bad-input corpus and the shipped scenarios or traces)
into a fresh temporary folder and fuzzes from there, so nothing in the repository is
written; crash reproducers go where ``-artifact_prefix=`` says (default: the current
folder, libFuzzer's own default).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BAD_INPUTS = REPO / "tests" / "bad_inputs"


def libfuzzer_argv(seeds: Iterable[Path]) -> list[str]:
    """``sys.argv`` for ``atheris.Setup``, with a temporary seed corpus added when the
    command line names no corpus folder."""
    argv = list(sys.argv)
    if any(not a.startswith("-") for a in argv[1:]):
        return argv
    corpus = Path(tempfile.mkdtemp(prefix="xpusim-fuzz-corpus-"))
    for i, seed in enumerate(sorted(set(seeds))):
        if seed.is_file() and seed.stat().st_size <= 64 * 1024:
            shutil.copyfile(seed, corpus / f"seed-{i:04d}{seed.suffix}")
    return [*argv, str(corpus)]
