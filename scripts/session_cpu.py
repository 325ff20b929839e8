"""CPU seconds of a command and of everything it starts, Ray's daemons and workers included.

``python scripts/session_cpu.py [--out procs.txt] -- COMMAND...`` (run it under ``setsid``: it
counts the processes of its own session). ``tests/cpu_time.py`` counts a test's own process and
the children it waited for; Ray's raylet does not wait for its workers, so their CPU is in no
``rusage``. Here, as a child subreaper (orphans are reaped as they die: a zombie would still look
alive to a lock check), every 0.2 s each live process of the session is read from ``/proc``.
Printed: ``rusage`` (every descendant reaped) and ``sampled`` (the sum over processes of their
last-seen CPU; each process's final < 0.2 s and processes shorter than that are missed; processes
that leave the session, e.g. the local engine's workers (``start_new_session``) and the tracking
server, are in ``rusage`` only).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import resource
import sys
import threading
import time

PR_SET_CHILD_SUBREAPER = 36


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="write each process's CPU s here")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    tick, session, me = os.sysconf("SC_CLK_TCK"), os.getsid(0), os.getpid()
    seen: dict[tuple[str, str], float] = {}
    names: dict[tuple[str, str], str] = {}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            for pid in (d for d in os.listdir("/proc") if d.isdigit() and int(d) != me):
                try:
                    fields = open(f"/proc/{pid}/stat").read().rsplit(") ", 1)[1].split()
                    if int(fields[3]) != session:
                        continue
                    key = (pid, fields[19])  # pid and start time: a reused pid is another key
                    seen[key] = max(seen.get(key, 0.0), (int(fields[11]) + int(fields[12])) / tick)
                    if key not in names:
                        names[key] = open(f"/proc/{pid}/cmdline").read().replace("\0", " ")[:160]
                except (OSError, IndexError):
                    continue
            time.sleep(0.2)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    began = time.time()
    child = os.posix_spawnp(command[0], command, os.environ)
    code, deadline = None, None
    while True:
        try:
            pid, status = os.waitpid(-1, 0 if deadline is None else os.WNOHANG)
        except ChildProcessError:
            break
        if pid == child:
            code, deadline = os.waitstatus_to_exitcode(status), time.time() + 90
        elif pid == 0:
            if time.time() > deadline:
                sys.stderr.write("session_cpu: descendants still alive 90 s after the command\n")
                break
            time.sleep(0.2)
    done.set()
    thread.join()
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    sys.stderr.write(
        f"session_cpu: exit {code}, wall {time.time() - began:.1f} s, rusage "
        f"{usage.ru_utime + usage.ru_stime:.1f} s, sampled {sum(seen.values()):.1f} s over "
        f"{len(seen)} processes\n"
    )
    if args.out:
        with open(args.out, "w") as out:
            for key, cpu in sorted(seen.items(), key=lambda item: -item[1]):
                out.write(f"{cpu:8.1f} {key[0]:>7} {names.get(key, '?')}\n")
    return 1 if code is None else code


if __name__ == "__main__":
    raise SystemExit(main())
