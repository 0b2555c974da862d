"""Run a command and write its peak resident memory (bytes) to a file: ``peak.py OUT CMD…``.

The tests need the tool's own peak memory.  Linux carries the high-water mark of the memory
a process had before ``exec`` into its ``ru_maxrss``, so a child forked by the test process
(tens of MB after pytest, docker and hypothesis are imported) would report at least that.
This launcher is small: it starts the command with ``posix_spawn`` and reads the command's
own rusage with ``wait4``.  Run it with ``python -S`` to keep it small.
"""

import os
import sys

if __name__ == "__main__":
    out, program, *args = sys.argv[1:]
    pid = os.posix_spawnp(program, [program, *args], os.environ)
    _, status, usage = os.wait4(pid, 0)
    with open(out, "w") as stream:
        stream.write(f"{usage.ru_maxrss * 1024}\n")
    code = os.waitstatus_to_exitcode(status)
    sys.exit(code if code >= 0 else 128 - code)
