"""Run ``hydrapicker`` verbs as real processes that can be SIGKILLed, without paying torch's import each time.

A "zygote" process imports torch, the CLI and the library once (about 2 s on our CPUs), then forks one child
per command; the child is a real process running ``hydrapicker.cli.main`` with its own stdout and
stderr, and a SIGKILL stops it as it would stop ``hydrapicker`` started from a shell. The zygote
runs no torch operation itself, so the children fork from a process without OpenMP threads.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Zygote", "Finished"]

_SERVER = r"""
import json, os, sys
import torch  # the slow imports, paid once; children then run this code even if the files change
import importlib, pkgutil, hydrapicker
for module in pkgutil.walk_packages(hydrapicker.__path__, "hydrapicker."):
    importlib.import_module(module.name)
import matplotlib.pyplot, PIL.Image, starfile, mrcfile, tqdm
print("ready", flush=True)
for line in sys.stdin:
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:
        try:
            os.chdir(job["cwd"])
            log = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(log, 1)
            os.dup2(log, 2)
            torch.set_num_threads(1)
            sys.argv = ["hydrapicker", *job["argv"]]
            code = hydrapicker.cli.main(job["argv"])
            sys.stdout.flush()
            sys.stderr.flush()
        except BaseException:
            import traceback
            traceback.print_exc()
            sys.stderr.flush()
            code = 99
        os._exit(code)
    print(pid, flush=True)
    _, status = os.waitpid(pid, 0)
    print(status, flush=True)
"""


@dataclass
class Finished:
    """How a command ended: its exit code, or the signal that killed it; its output (stdout + stderr)."""

    code: int | None
    signal: int | None
    seconds: float
    output: str

    @property
    def killed(self) -> bool:
        return self.signal == signal.SIGKILL


class Zygote:
    """One zygote process; :meth:`run` runs a command in a fresh child, optionally killed after a delay."""

    def __init__(self) -> None:
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TQDM_DISABLE="1")
        self.process = subprocess.Popen(
            [sys.executable, "-c", _SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        assert self._line() == "ready"

    def _line(self) -> str:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("the zygote process died")
        return line.strip()

    def run(self, argv: list[str], cwd: Path, *, kill_after: float | None = None) -> Finished:
        """Run ``hydrapicker ARGV`` in ``cwd``; with ``kill_after`` seconds, SIGKILL it then if still running."""
        assert self.process.stdin is not None
        log = Path(cwd) / f".log-{time.monotonic_ns()}"
        self.process.stdin.write(json.dumps({"argv": [str(a) for a in argv], "cwd": str(cwd), "log": str(log)}) + "\n")
        self.process.stdin.flush()
        start = time.perf_counter()
        pid = int(self._line())
        if kill_after is not None:
            time.sleep(kill_after)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:  # it had finished and been reaped already
                pass
        status = int(self._line())
        seconds = time.perf_counter() - start
        output = log.read_text(errors="replace")
        log.unlink()
        if os.WIFSIGNALED(status):
            return Finished(None, os.WTERMSIG(status), seconds, output)
        return Finished(os.WEXITSTATUS(status), None, seconds, output)

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(timeout=30)
