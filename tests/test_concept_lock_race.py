"""Two processes find the same stale lock at the same moment: exactly one takes it (issue 21 §7).

Each child process reads the stale lock (its holder, a dead pid on this host) and then waits a
moment before acting on it, so that both have judged it stale before either replaces it; the
``flock`` guard in ``ConceptLock.acquire`` must still let only one of them take the lock.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

from magicapture_pipeline.concepts import ConceptLock

CHILD = r"""
import json, sys, time
from pathlib import Path
from magicapture_pipeline import concepts

root, go, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
out.with_suffix(".ready").touch()  # imported: the parent may start the race
judge = concepts.ConceptLock.stale_reason

def slow_judge(self):
    reason = judge(self)
    time.sleep(1.0)  # widen the window between judging the lock stale and replacing it
    return reason

concepts.ConceptLock.stale_reason = slow_judge
while not go.exists():
    time.sleep(0.005)
lock = concepts.ConceptLock(root, "race")
try:
    lock.acquire()
    outcome = {"took": True}
    # hold it until the other one has decided and written its outcome (both took it: 20 s)
    until = time.monotonic() + 20
    while time.monotonic() < until and not [p for p in out.parent.glob("out*.json") if p != out]:
        time.sleep(0.01)
    lock.release()
except concepts.ConceptLockedError as error:
    outcome = {"took": False, "error": str(error)}
out.write_text(json.dumps(outcome))
"""


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_two_processes_find_the_same_stale_lock_and_one_takes_it(tmp_path: Path):
    lock = ConceptLock(tmp_path, "race")
    lock.path.parent.mkdir(parents=True)
    dead = _dead_pid()
    record = {"concept": "race", "pid": dead, "host": socket.gethostname(),
              "started": time.time() - 60, "process_start": None, "note": "crashed"}  # fmt: skip
    lock.path.write_text(json.dumps(record))
    assert "is gone" in (lock.stale_reason() or "")
    go = tmp_path / "go"
    outs = [tmp_path / f"out{i}.json" for i in range(2)]
    children = [
        subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path), str(go), str(out)])
        for out in outs
    ]
    deadline = time.monotonic() + 60
    while not all(out.with_suffix(".ready").exists() for out in outs):  # both imported, waiting
        assert time.monotonic() < deadline, "the children did not start"
        time.sleep(0.01)
    go.touch()
    for child in children:
        assert child.wait(timeout=60) == 0
    outcomes = [json.loads(out.read_text()) for out in outs]
    assert sorted(o["took"] for o in outcomes) == [False, True]
    [refused] = [o for o in outcomes if not o["took"]]
    winner = next(c for c, o in zip(children, outcomes, strict=True) if o["took"])
    assert f"already running (pid {winner.pid} on" in refused["error"]
    assert not lock.path.exists()  # the winner gave it back
