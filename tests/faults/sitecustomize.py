"""Fault injection for executor tests, loaded by every Python process started with this folder
on PYTHONPATH (spawned workers, Ray workers); inert unless FMR_KILL_MARK is set.

With FMR_KILL_MARK=<path>, the first worker to finish writing a unit's shards dies (os._exit)
just before writing that unit's stats file (``runner.write_stats``), and creates <path> so that
only one dies.
"""

import os

if os.environ.get("FMR_KILL_MARK"):
    import builder.build.runner as _runner

    _write = _runner.write_stats

    def _die_once(storage, path, payload):  # type: ignore[no-untyped-def]
        try:
            handle = os.open(os.environ["FMR_KILL_MARK"], os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return _write(storage, path, payload)
        os.write(handle, f"{os.getpid()} {path}".encode())
        os.close(handle)
        os._exit(17)

    _runner.write_stats = _die_once
