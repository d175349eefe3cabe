"""Fault injection for executor tests, loaded by every Python process started with this folder
on PYTHONPATH (spawned workers, Ray workers); inert unless FMR_KILL_MARK is set.

With FMR_KILL_MARK=<path>, the first worker to finish writing a unit's shards dies (os._exit)
just before writing that unit's stats file (``runner.write_stats``), and creates <path> so that
only one dies. The first unit runner created after that death (the restarted Ray actor) takes
FMR_RESTART_DELAY seconds (default 0) longer to load, as reloading real components does.

With FMR_SLOW_STATS=<seconds>, every unit waits that long before writing its stats file: a
unit that takes minutes, as on a GPU.
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
    _init = _runner.UnitRunner.__init__

    def _slow_after_the_death(self, settings):  # type: ignore[no-untyped-def]
        mark = os.environ["FMR_KILL_MARK"]
        delay = float(os.environ.get("FMR_RESTART_DELAY", "0"))
        if delay and os.path.isfile(mark) and open(mark).read()[:1].isdigit():  # a worker died: this is its replacement
            try:
                os.close(os.open(mark + ".slowed", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                import time

                time.sleep(delay)
            except FileExistsError:
                pass
        _init(self, settings)

    _runner.UnitRunner.__init__ = _slow_after_the_death

if os.environ.get("FMR_SLOW_STATS"):  # a unit that takes long: its stats file waits that many seconds
    import builder.build.runner as _slow_runner

    _write_now = _slow_runner.write_stats

    def _write_late(storage, path, payload):  # type: ignore[no-untyped-def]
        import time

        time.sleep(float(os.environ["FMR_SLOW_STATS"]))
        return _write_now(storage, path, payload)

    _slow_runner.write_stats = _write_late
