"""Start a test module's worker as several ranks on this host, as a launcher would.

Each rank is ``python SCRIPT OUT ARGS...`` with the environment torchrun sets (RANK,
LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT), gloo on the
loopback interface; it writes a JSON report to OUT, which ``run_ranks`` returns.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, List, Sequence


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(script: str, args: Sequence[str], tmp: Path, *, world_size: int = 2,
              timeout: float = 300, **env: str) -> List[Any]:
    """Run ``script`` as ``world_size`` ranks; every rank must exit 0 within ``timeout``
    seconds. Returns each rank's report, in rank order."""
    base = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()),
                WORLD_SIZE=str(world_size), LOCAL_WORLD_SIZE=str(world_size),
                GLOO_SOCKET_IFNAME="lo", **env)
    outs = [tmp / f"rank{r}.json" for r in range(world_size)]
    procs = [subprocess.Popen([sys.executable, script, str(outs[r]), *args],
                              env=dict(base, RANK=str(r), LOCAL_RANK=str(r)),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in range(world_size)]
    logs = []
    try:
        for proc in procs:
            logs.append(proc.communicate(timeout=timeout)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for r, proc in enumerate(procs):
        assert proc.returncode == 0, f"rank {r} of {script} failed:\n{logs[r][-6000:]}"
    return [json.loads(out.read_text()) for out in outs]
