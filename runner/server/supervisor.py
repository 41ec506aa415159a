"""The supervisor (master) process: bind once, fork workers, watch them.

Modelled on gunicorn's arbiter. No event loop here: the master sleeps in
``select`` on a self-pipe that signal handlers write to (``signal.set_wakeup_fd``);
the handlers themselves only enqueue the signal, and the loop dispatches to
``handle_<name>`` methods.

* Plugins are imported in the master first, so a broken plugin stops start-up
  with a clear message before any worker exists; workers inherit the imported
  modules through fork and run the plugins' ``startup()`` themselves.
* Workers inherit the one listening socket and a path to the shared conf
  store (``runner.conf.sharedstore``), which outlives any worker.
* A worker that dies is replaced, with a growing delay if it keeps dying soon
  after it started; one that fails to boot (a plugin's ``startup()`` raised)
  stops the runner instead of respawning forever.
* SIGTERM/SIGINT: workers get SIGTERM (they finish in-flight calls within
  0.7 s), stragglers get SIGKILL at 0.9 s, all within APISIX's 1 s.
* SIGHUP: config.yaml and the plugins are reloaded (``workers`` too, unless
  ``--workers`` was given) and workers replaced one at a time, each new one
  serving before an old one is told to retire; a retiring worker hands its
  connections over to the serving ones (runner.server.balance).
* The workers share a table (runner.server.pool) of who serves and how many
  connections each holds: the supervisor claims a slot for each worker it
  forks and frees it when the worker exits.
* The runner exits when the process that started it (APISIX) dies.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import logging
import os
import select
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from runner import compat, hotpath
from runner.api.discovery import load_plugins, plugin_dirs
from runner.api.plugin import Plugin, PluginError
from runner.conf.sharedstore import SqliteBackend
from runner.ops.logs import SUMMARY_LINE, set_role
from runner.ops.metrics import STATUS_FILE, Totals, read_snapshot, write_atomic
from runner.server.listener import Listener
from runner.server.pool import (
    Mailbox,
    Seat,
    SlotState,
    WorkerTable,
    check_mailbox_dir,
    handover_path,
)
from runner.server.worker import WORKER_BOOT_ERROR
from runner.settings import Settings, SettingsError, load_settings

log = logging.getLogger("runner.supervisor")

STOP_DEADLINE = 0.9  # seconds from SIGTERM to SIGKILL of stragglers
BOOT_TIMEOUT = 30.0
MAX_BACKOFF = 10.0
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)
PluginLoader = Callable[[Settings], dict[str, Plugin]]
# (settings, plugins, listening fd, conf store path, ready fd, seat) -> runs until stopped
WorkerMain = Callable[[Settings, dict[str, Plugin], int, str, int, Seat], None]


def set_parent_death_signal(sig: int) -> None:
    """Ask Linux to send us ``sig`` when our parent dies (no-op elsewhere)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, sig, 0, 0, 0)


class WorkerProc:
    """What the master knows of one worker process."""

    def __init__(self, pid: int, index: int, ready_fd: int, generation: int, slot: int) -> None:
        self.pid = pid
        self.index = index
        self.slot = slot  # in the pool's table
        self.ready_fd = ready_fd  # readable (a byte or EOF) once the worker serves
        self.generation = generation
        self.started = time.monotonic()
        self.ready = False
        self.retiring = False  # replaced (max_requests): its exit is planned


class Supervisor:
    def __init__(
        self,
        settings: Settings,
        config_path: str,
        load: PluginLoader,
        serve_worker: WorkerMain,
        workers_flag: int | None = None,
    ) -> None:
        self.settings = settings
        self._workers_flag = workers_flag  # --workers: wins over config.yaml on reload too
        # A config file that existed at start must still exist at a reload.
        self._config_required = os.path.exists(config_path)
        self.config_path = config_path
        self._load = load
        self._serve_worker = serve_worker
        self.plugins: dict[str, Plugin] = {}
        self.workers: dict[int, WorkerProc] = {}
        self.generation = 0
        self._signals: list[int] = []
        self._stopping = False
        self._exit_code = 0
        self._failures = 0
        self._respawn_at = 0.0  # no respawn before this monotonic time (backoff)
        self._parent = os.getppid()
        self._store_dir = ""
        self._listener: Listener | None = None
        self._table: WorkerTable | None = None
        self._socket_ok = True
        self._mailbox: Mailbox | None = None  # pokes the workers when one exits
        self._wake_r, self._wake_w = -1, -1
        self._metrics_sock: socket.socket | None = None
        self._exporter_pid = 0
        self._respawns = 0
        self._recycles = 0
        self._retired = Totals()  # metrics of exited workers
        self._folded: list[str] = []  # their boot ids (bounded)

    # -- start and stop

    def run(self) -> int:
        self.plugins = self._load(self.settings)
        self._store_dir = tempfile.mkdtemp(prefix="apisix-runner-")
        try:
            check_mailbox_dir(self._store_dir)
            SqliteBackend.create(
                self.store_path, self.settings.token_ttl, self.settings.conf_cache.max_entries
            )
            s = self.settings
            self._listener = Listener(
                s.socket_path, s.socket.mode, s.socket.backlog, s.socket.owner, s.socket.group
            )
            self._listener.bind()
            self._table = WorkerTable()  # before any fork: every worker maps the same pages
            self._mailbox = Mailbox(self._store_dir)
            self._start_metrics()
            self._install_signals()
            build = hotpath.describe()
            if hotpath.build() == "partial":
                log.warning("%s", build, extra=SUMMARY_LINE)
            else:
                log.info("%s", build)
            log.info("listening on %s with %d worker%s", s.socket_path, s.workers,
                     "" if s.workers == 1 else "s", extra=SUMMARY_LINE)  # fmt: skip
            self._spawn_missing()
            self._loop()
        finally:
            self._cleanup()
        return self._exit_code

    @property
    def store_path(self) -> str:
        return str(Path(self._store_dir, "confs.sqlite3"))

    @property
    def metrics_dir(self) -> str:
        return str(Path(self._store_dir, "metrics"))

    # -- metrics: the exporter process and the supervisor's status file

    def _start_metrics(self) -> None:
        address = self.settings.metrics.host_port
        if address is None:
            return
        os.mkdir(self.metrics_dir)
        # Bound here, before any worker: a taken port stops start-up.
        self._metrics_sock = socket.create_server(address)
        log.info("metrics on http://%s:%d/metrics", *address, extra=SUMMARY_LINE)
        self._write_status()
        self._spawn_exporter()

    def _spawn_exporter(self) -> None:
        assert self._metrics_sock is not None
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                self._child_setup()
                set_role("exporter")
                self._listener_close_in_child()
                from runner.ops.exporter import (
                    serve as serve_exporter,  # prometheus_client: here only
                )

                listener = self._listener
                assert listener is not None
                serve_exporter(
                    self._metrics_sock, self.metrics_dir, self._conf_tokens(), listener.still_ours
                )
            except BaseException:
                log.exception("metrics exporter crashed")
                code = 1
            finally:
                os._exit(code)
        self._exporter_pid = pid

    def _conf_tokens(self) -> Callable[[], int | None]:
        settings, path = self.settings, self.store_path
        backend: list[SqliteBackend] = []

        def size() -> int | None:
            try:
                if not backend:  # opened in the exporter process, on first scrape
                    backend.append(SqliteBackend(path, settings.token_ttl, 1))
                return backend[0].size()
            except Exception:
                return None

        return size

    def _write_status(self) -> None:
        if self._metrics_sock is None:
            return
        workers = [w for w in self.workers.values() if not w.retiring]
        current = [w for w in workers if w.generation == self.generation]
        status = {
            "workers_expected": self.settings.workers,
            "workers_alive": len(workers),
            "workers_ready": sum(1 for w in current if w.ready),
            "worker_respawns": self._respawns,
            "worker_recycles": self._recycles,
            "retired": self._retired.as_snapshot(),
            "folded_boots": self._folded,
        }
        with contextlib.suppress(OSError):
            write_atomic(os.path.join(self.metrics_dir, STATUS_FILE), status)

    def _fold_metrics(self, pid: int) -> None:
        """Keep an exited worker's counts: into the status first, then its
        file goes (the exporter reads files before the status; see gather)."""
        if self._metrics_sock is None:
            return
        path = os.path.join(self.metrics_dir, f"worker-{pid}.msgpack")
        snap = read_snapshot(path)
        if snap is not None:
            self._retired.add(snap, gauges=False)
            self._folded = [*self._folded[-999:], str(snap.get("boot"))]
        self._write_status()
        with contextlib.suppress(OSError):
            os.unlink(path)

    def _install_signals(self) -> None:
        self._wake_r, self._wake_w = os.pipe()
        for fd in (self._wake_r, self._wake_w):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(self._wake_w)
        for sig in SIGNALS:
            signal.signal(sig, self._enqueue)
        set_parent_death_signal(signal.SIGTERM)

    def _enqueue(self, signum: int, frame: object) -> None:
        self._signals.append(signum)

    def _cleanup(self) -> None:
        self._kill_all(signal.SIGKILL)
        if self._exporter_pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._exporter_pid, signal.SIGKILL)
        self._reap()
        if self._metrics_sock is not None:
            self._metrics_sock.close()
        if self._listener is not None:
            self._listener.close()
        if self._mailbox is not None:
            self._mailbox.close()
        if self._store_dir:
            shutil.rmtree(self._store_dir, ignore_errors=True)

    # -- the master loop

    def _loop(self) -> None:
        while not self._stopping:
            wait = self._respawn_at - time.monotonic()
            self._sleep(min(1.0, wait) if wait > 0 else 1.0)
            while self._signals and not self._stopping:
                self._dispatch(self._signals.pop(0))
            self._reap()
            self._check_ready()
            if self._stopping:
                break
            self._check_socket()
            if os.getppid() != self._parent:
                log.warning("the process that started the runner exited; stopping")
                self.handle_term()
            elif time.monotonic() >= self._respawn_at:
                self._spawn_missing()

    def _check_socket(self) -> None:
        """Say so, once, when the socket path stops leading to this runner."""
        assert self._listener is not None
        ours = self._listener.still_ours()
        if not ours and self._socket_ok:
            log.error("%s was removed or replaced: APISIX cannot reach this runner "
                      "(/healthz fails); restart it", self._listener.path)  # fmt: skip
        self._socket_ok = ours

    def _sleep(self, timeout: float) -> None:
        # Every worker's pipe: "1" when it serves, "R" when it wants replacing.
        fds = [self._wake_r, *(w.ready_fd for w in self.workers.values())]
        with contextlib.suppress(InterruptedError):
            select.select(fds, [], [], timeout)
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_r, 4096):
                pass

    def _dispatch(self, signum: int) -> None:
        name = signal.Signals(signum).name[3:].lower()
        handler = getattr(self, f"handle_{name}", None)
        if handler is not None:
            handler()

    def handle_chld(self) -> None:
        pass  # reaping happens on every turn of the loop

    def handle_term(self) -> None:
        self._stopping = True
        log.info("stopping")
        self._kill_all(signal.SIGTERM)
        deadline = time.monotonic() + STOP_DEADLINE
        while self.workers and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.01)

    handle_int = handle_term

    def handle_hup(self) -> None:
        log.info("reloading %s and the plugins", self.config_path)
        try:
            settings = load_settings(
                self.config_path,
                workers=self._workers_flag,
                profile_dir=self.settings.profile_dir,
                required=self._config_required,
            )
            plugins = self._load(settings)
        except (SettingsError, PluginError) as exc:
            log.error("reload failed, keeping the running workers: %s", exc)
            return
        self._replace_workers(settings, plugins)

    # -- workers

    def _spawn_missing(self) -> None:
        used = {w.index for w in self.workers.values() if w.generation == self.generation}
        for index in range(self.settings.workers):
            if index not in used:
                self._spawn(index, self.generation, self.settings, self.plugins)
                self._write_status()

    def _spawn(
        self, index: int, generation: int, settings: Settings, plugins: dict[str, Plugin]
    ) -> WorkerProc:
        assert self._listener is not None and self._listener.sock is not None
        assert self._table is not None
        slot = self._table.claim()
        ready_r, ready_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child never returns from here
            os.close(ready_r)
            self._become_worker(index, ready_w, settings, plugins, slot)
        os.close(ready_w)
        self._table.set_pid(slot, pid)
        worker = WorkerProc(pid, index, ready_r, generation, slot)
        self.workers[pid] = worker
        log.info("worker %d started (pid %d)", index, pid)
        return worker

    def _become_worker(
        self, index: int, ready_fd: int, settings: Settings, plugins: dict[str, Plugin], slot: int
    ) -> None:
        code = 0
        try:
            self._child_setup()
            set_role(f"worker {index}")
            if self._metrics_sock is not None:
                self._metrics_sock.close()
            assert self._listener is not None and self._listener.sock is not None
            assert self._table is not None
            if self._mailbox is not None:
                self._mailbox.sock.close()
            seat = Seat(self._table, slot, self._store_dir)
            self._serve_worker(
                settings, plugins, self._listener.sock.fileno(), self.store_path, ready_fd, seat
            )
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            log.exception("worker %d crashed", index)
            code = 1
        finally:
            logging.shutdown()
            os._exit(code)

    def _child_setup(self) -> None:
        """First steps of any forked child: the master's signal plumbing and
        pipes are not its business."""
        signal.set_wakeup_fd(-1)
        for sig in SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:  # the exporter starts before the signal pipe exists
                os.close(fd)
        for other in self.workers.values():
            os.close(other.ready_fd)
        set_parent_death_signal(signal.SIGTERM)

    def _listener_close_in_child(self) -> None:
        if self._listener is not None and self._listener.sock is not None:
            self._listener.sock.close()  # the exporter never serves APISIX

    def _check_ready(self) -> None:
        changed = False
        for worker in list(self.workers.values()):
            r, _, _ = select.select([worker.ready_fd], [], [], 0)
            message = os.read(worker.ready_fd, 64) if r else b""  # b"": it died
            if b"1" in message and not worker.ready:
                worker.ready = changed = True
                self._failures = 0
            if b"R" in message:
                self._recycle(worker)
                changed = True
            if not worker.ready and time.monotonic() - worker.started > BOOT_TIMEOUT:
                log.error("worker %d did not start within %.0f s", worker.index, BOOT_TIMEOUT)
                os.kill(worker.pid, signal.SIGKILL)
        if changed:
            self._write_status()

    def _recycle(self, worker: WorkerProc) -> None:
        """max_requests: start the replacement first, then retire the old one
        gracefully (as on reload), so capacity never drops and no call is lost."""
        if worker.retiring or self._stopping or worker.generation != self.generation:
            return
        fresh = self._spawn(worker.index, worker.generation, self.settings, self.plugins)
        if not self._wait_ready(fresh):
            log.error("replacement of worker %d did not start; keeping it", worker.index)
            return
        worker.retiring = True
        self._recycles += 1
        log.info("worker %d (pid %d) replaced after max_requests", worker.index, worker.pid)
        self._retire(worker)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self._exporter_pid:
                self._exporter_exited(status)
                continue
            worker = self.workers.pop(pid, None)
            if worker is not None:
                os.close(worker.ready_fd)
                self._release(worker)
                self._fold_metrics(pid)
                self._worker_exited(worker, status)

    def _release(self, worker: WorkerProc) -> None:
        """Free the worker's slot and mailbox, and poke the others: with its
        count gone, one of them may be the least loaded now and accept."""
        assert self._table is not None
        self._table.release(worker.slot)
        with contextlib.suppress(OSError):
            os.unlink(handover_path(self._store_dir, worker.pid))
        if self._mailbox is not None:
            for peer in self._table.alive():
                self._mailbox.poke(peer.pid)

    def _exporter_exited(self, status: int) -> None:
        self._exporter_pid = 0
        if not self._stopping:
            log.error("metrics exporter exited with %d; restarting it",
                      os.waitstatus_to_exitcode(status))  # fmt: skip
            self._spawn_exporter()

    def _worker_exited(self, worker: WorkerProc, status: int) -> None:
        code = os.waitstatus_to_exitcode(status)
        if self._stopping or worker.generation != self.generation or worker.retiring:
            return  # a retired worker, or a reload's trial worker (handled there)
        if code == WORKER_BOOT_ERROR:
            log.error("worker %d failed to boot; stopping the runner", worker.index)
            self._exit_code = 3
            self.handle_term()
            return
        log.error("worker %d (pid %d) exited with %d; replacing it", worker.index, worker.pid, code)
        self._respawns += 1
        if not worker.ready:
            # Died before serving: back off, but keep listening to signals
            # (the loop sleeps in select until then; SIGTERM still acts at once).
            self._failures += 1
            delay = min(0.1 * 2**self._failures, MAX_BACKOFF)
            log.warning("worker keeps dying; waiting %.1f s before the next start", delay)
            self._respawn_at = time.monotonic() + delay

    def _replace_workers(self, settings: Settings, plugins: dict[str, Plugin]) -> None:
        """Start the new generation one worker at a time; commit to it only
        once its first worker serves, else roll back and keep the old ones.
        Old workers retire gracefully (SIGUSR2), one per new worker: they stop
        accepting and hand each connection over to a serving worker at an idle
        point, so APISIX never sees a connection close and no call is lost."""
        old = sorted(
            (w for w in self.workers.values() if w.generation == self.generation),
            key=lambda w: w.index,
        )
        generation = self.generation + 1
        if settings.workers != self.settings.workers:
            log.info("workers: %d -> %d", self.settings.workers, settings.workers)
        for index in range(max(settings.workers, len(old))):
            if index < settings.workers:
                fresh = self._spawn(index, generation, settings, plugins)
                if not self._wait_ready(fresh):
                    log.error("reloaded worker %d did not start; keeping the old workers", index)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(fresh.pid, signal.SIGKILL)
                    if index == 0:
                        return  # nothing committed yet: the old generation carries on
                if index == 0:
                    self.settings, self.plugins, self.generation = settings, plugins, generation
            if index < len(old):
                self._retire(old[index])
        self._spawn_missing()  # a new worker that failed to start is retried
        log.info("reload done: generation %d, %d workers", self.generation, settings.workers,
                 extra=SUMMARY_LINE)  # fmt: skip

    def _retire(self, worker: WorkerProc) -> None:
        assert self._table is not None
        # Leaving before the signal arrives: no worker hands it a connection.
        self._table.set_state(worker.slot, SlotState.LEAVING)
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker.pid, signal.SIGUSR2)

    def _wait_ready(self, worker: WorkerProc) -> bool:
        deadline = time.monotonic() + BOOT_TIMEOUT
        while time.monotonic() < deadline and worker.pid in self.workers:
            r, _, _ = select.select([worker.ready_fd], [], [], 0.05)
            if r:
                worker.ready = os.read(worker.ready_fd, 1) == b"1"
                return worker.ready
            self._reap()
        return False

    def _kill_all(self, sig: int) -> None:
        for pid in list(self.workers):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
            except OSError as exc:  # pragma: no cover - e.g. EPERM
                if exc.errno != errno.ESRCH:
                    raise


def load_all(settings: Settings, extra: Sequence[type[Plugin]] = ()) -> dict[str, Plugin]:
    """Every plugin the config names, in any plugin API the runner accepts, and
    the ``extra`` classes (registered in code: they replace a bundled plugin of
    the same name); plugin_options may name only those."""
    plugins = load_plugins(
        plugin_dirs(settings), settings.entry_points, compat.ADAPTERS, registered=extra
    )
    unknown = sorted(set(settings.plugin_options) - set(plugins))
    if unknown:
        raise SettingsError(
            f"plugin_options names plugins that are not loaded: {', '.join(unknown)} "
            f"(loaded: {', '.join(sorted(plugins)) or 'none'})"
        )
    return plugins


def main(
    settings: Settings,
    config_path: str,
    workers_flag: int | None = None,
    extra: Sequence[type[Plugin]] = (),
) -> int:
    from runner.server.worker import serve_worker

    sys.stdout.flush()  # nothing buffered may be written twice after fork
    load = functools.partial(load_all, extra=extra)
    return Supervisor(settings, config_path, load, serve_worker, workers_flag).run()
