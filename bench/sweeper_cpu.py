"""`manage.py qcluster` with each sweep's CPU time recorded (bench/README.md, issue 9.8).

    python bench/sweeper_cpu.py ROOT OUT

Runs the qcluster of the FluxWeb tree at ROOT after wrapping `generations.sweeper.sweep`, which the sweep task
and a task carrying the sweep on both call: each sweep appends "pid start end cpu" (wall-clock start and end,
its thread's CPU seconds) to OUT. Workers are forked from this process, so they inherit the wrapper. Nothing
in the app changes, so the same measurement runs against any commit's tree."""

import os
import sys
import time

root, out = sys.argv[1], sys.argv[2]
sys.path.insert(0, root)
os.chdir(root)

import django  # noqa: E402

django.setup()

from generations import sweeper  # noqa: E402

real_sweep = sweeper.sweep


def sweep(*args, **kwargs):
    start, cpu = time.time(), time.thread_time()
    try:
        return real_sweep(*args, **kwargs)
    finally:
        line = f"{os.getpid()} {start:.3f} {time.time():.3f} {time.thread_time() - cpu:.4f}\n"
        with open(out, "a") as f:
            f.write(line)


sweeper.sweep = sweep

from django.core.management import execute_from_command_line  # noqa: E402

execute_from_command_line([os.path.join(root, "manage.py"), "qcluster"])
