"""What every part of the benchmark shares: fresh databases, the service as real
processes, the load generator process, statistics, results and machine facts."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
DEFAULT_RESULTS = RESULTS_DIR / "latest.json"
DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
CRM_DIR = ROOT.parent / "shared" / "data" / "crm-sales-opportunities"

TOKEN = "bench-admin-token-0000000000"
API_KEYS = f"{TOKEN}:bench-admin:admin"
BACKENDS = ("postgres", "sqlite")
START_TIMEOUT = 240.0  # a busy 2-core machine can take minutes to start several processes

_started = time.monotonic()


def say(message: str) -> None:
    """A progress line on stderr, with the time since the suite started."""
    elapsed = time.monotonic() - _started
    print(f"[bench {elapsed:7.1f}s] {message}", file=sys.stderr, flush=True)


class BenchError(RuntimeError):
    """The benchmark itself cannot go on (not a slow figure: something broke)."""


# --- statistics -------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation; values must be sorted."""
    if not sorted_values:
        return float("nan")
    if len(sorted_values) == 1:
        return float(sorted_values[0])
    k = (len(sorted_values) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(sorted_values) - 1)
    return float(sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo))


def latency_stats(values_ms: Sequence[float]) -> dict[str, Any]:
    """count, mean, p50, p95, p99 and max of latencies in milliseconds."""
    ordered = sorted(values_ms)
    if not ordered:
        return {"count": 0}
    return {
        "count": len(ordered),
        "mean_ms": round(sum(ordered) / len(ordered), 2),
        "p50_ms": round(percentile(ordered, 50), 2),
        "p95_ms": round(percentile(ordered, 95), 2),
        "p99_ms": round(percentile(ordered, 99), 2),
        "max_ms": round(ordered[-1], 2),
    }


def ratio(value: float | None, base: float | None) -> float | None:
    if not value or not base:
        return None
    return round(value / base, 3)


# --- sizes ------------------------------------------------------------------------------


@dataclass
class Sizes:
    """How much each part does; ``full()`` for the real run, ``smoke()`` for CI."""

    smoke: bool
    levels: list[int]
    warmup_s: float
    level_s: float
    level_max_requests: int
    half_saturation_s: float
    pg_events: int
    sqlite_events: int
    query_clients: int
    query_s: float
    query_max_requests: int
    lag_rate: float
    lag_s: float
    import_rows: int | None  # None: the whole dataset
    seed: int = 7
    lag_saturation: float | None = None  # part 4 alone: part 1's saturation, if known

    @classmethod
    def full(cls) -> Sizes:
        return cls(
            smoke=False,
            levels=[1, 4, 16, 32],
            warmup_s=3.0,
            level_s=15.0,
            level_max_requests=50_000,
            half_saturation_s=30.0,
            pg_events=1_000_000,
            sqlite_events=200_000,
            query_clients=20,
            query_s=10.0,
            query_max_requests=5_000,
            lag_rate=200.0,
            lag_s=60.0,
            import_rows=None,
        )

    @classmethod
    def smoke_run(cls) -> Sizes:
        return cls(
            smoke=True,
            levels=[1, 4],
            warmup_s=0.1,
            level_s=0.5,
            level_max_requests=40,
            half_saturation_s=0.5,
            pg_events=1_000,
            sqlite_events=1_000,
            query_clients=4,
            query_s=0.3,
            query_max_requests=4,
            lag_rate=20.0,
            lag_s=1.0,
            import_rows=100,
        )

    def events_for(self, backend: str) -> int:
        return self.pg_events if backend == "postgres" else self.sqlite_events


# --- databases --------------------------------------------------------------------------


class Database:
    """A fresh database for one part of the run; dropped when the part ends."""

    backend: str
    url: str

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def drop(self) -> None:
        raise NotImplementedError

    def projection_states(self) -> dict[str, tuple[int, int]]:
        """name -> (generation, position); empty before the state table exists."""
        try:
            rows = self.query("SELECT name, generation, position FROM projection_state")
        except Exception:
            return {}
        return {str(r[0]): (int(r[1]), int(r[2])) for r in rows}

    def probe(self) -> dict[str, Any]:
        """How the load generator reads projection positions directly."""
        raise NotImplementedError

    def describe(self) -> str:
        return self.backend


class PostgresDatabase(Database):
    backend = "postgres"

    def __init__(self, admin_url: str) -> None:
        import psycopg

        self._psycopg = psycopg
        self.admin_url = admin_url
        self.name = f"bench_{secrets.token_hex(5)}"
        parts = urlsplit(admin_url)
        self.url = urlunsplit(parts._replace(path="/" + self.name))
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{self.name}"')
        self._conn: Any = None

    def _connection(self) -> Any:
        if self._conn is None or self._conn.closed:
            self._conn = self._psycopg.connect(self.url, autocommit=True, connect_timeout=5)
        return self._conn

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        conn = self._connection()
        try:
            return list(conn.execute(sql).fetchall())
        except self._psycopg.OperationalError:
            self._conn = None  # reconnect next time
            raise

    def drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
        with self._psycopg.connect(self.admin_url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')

    def probe(self) -> dict[str, Any]:
        return {"kind": "postgres", "dsn": self.url}

    def describe(self) -> str:
        return f"postgres database {self.name}"


class SqliteDatabase(Database):
    backend = "sqlite"

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="dealtrail-bench-"))
        self.path = self.dir / "dealtrail.db"
        self.url = f"sqlite:///{self.path}"

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        if not self.path.exists():
            return []
        with contextlib.closing(sqlite3.connect(self.path, timeout=10)) as conn:
            return list(conn.execute(sql).fetchall())

    def drop(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def probe(self) -> dict[str, Any]:
        return {"kind": "sqlite", "path": str(self.path)}

    def describe(self) -> str:
        return "sqlite file in a temporary directory"


def admin_url() -> str:
    return os.environ.get("BENCH_DATABASE_URL", DEFAULT_ADMIN_URL)


def postgres_problem() -> str | None:
    """None when the PostgreSQL admin connection works, else why not."""
    try:
        import psycopg

        with psycopg.connect(admin_url(), connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:
        return f"PostgreSQL unreachable ({type(exc).__name__}: {str(exc).strip()[:200]})"
    return None


@contextlib.contextmanager
def fresh_database(backend: str) -> Iterator[Database]:
    """A new, empty database: ``bench_<random>`` on PostgreSQL or a temp SQLite file."""
    db: Database = PostgresDatabase(admin_url()) if backend == "postgres" else SqliteDatabase()
    say(f"created {db.describe()}")
    try:
        yield db
    finally:
        try:
            db.drop()
            say(f"dropped {db.describe()}")
        except Exception as exc:
            say(f"could not drop {db.describe()}: {exc}")


# --- processes --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def dealtrail_command() -> list[str]:
    """The ``dealtrail`` console script of this interpreter's environment."""
    script = Path(sys.executable).parent / "dealtrail"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "services.cli"]


# API processes for ``dealtrail serve`` and the baseline on PostgreSQL (``--web-workers``).
WEB_WORKERS = {"postgres": 1}


def web_workers(db: Database) -> int:
    return WEB_WORKERS["postgres"] if db.backend == "postgres" else 1


def service_env(db: Database, data_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a ``dealtrail`` process on ``db`` (nothing inherited that
    would point it elsewhere)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("DEALTRAIL_") and k not in ("DATABASE_URL",)
    }
    env.update(
        DATABASE_URL=db.url,
        DEALTRAIL_API_KEYS=API_KEYS,
        DEALTRAIL_ENV="production",
        DEALTRAIL_DATA_DIR=str(data_dir),
        DEALTRAIL_EMBEDDED_WORKER="false",
        DEALTRAIL_WEB_WORKERS=str(web_workers(db)),
        # One bench token sends hundreds of commands a second: production's per-token
        # limits would measure the limiter's refusals, not the service.
        DEALTRAIL_RATE_LIMITS="off",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def proc_status_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a live process, in kB, from /proc."""
    out: dict[str, int] = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            with contextlib.suppress(ValueError, IndexError):
                out[key] = int(rest.split()[0])
    return out


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def proc_cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time a live process has used so far, from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (children, their children, ...), from /proc."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = list(Path(f"/proc/{parent}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except (OSError, ValueError):
                continue
            found += children
            todo += children
    return found


class Proc:
    """A child process with its output in a log file and its memory sampled."""

    def __init__(
        self, name: str, args: list[str], env: dict[str, str], log_dir: Path, sample: bool = True
    ) -> None:
        self.name = name
        self.log = log_dir / f"{name}.log"
        self.started = time.monotonic()
        with self.log.open("wb") as out:
            self.popen = subprocess.Popen(
                args,
                env=env,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.peak_rss_kb = 0
        self.peak_tree_rss_kb = 0
        self.peak_rss_by_pid_kb: dict[int, int] = {}
        self.cpu_seconds_by_pid: dict[int, float] = {}  # as last sampled
        self._stop_sampling = threading.Event()
        self._sampler: threading.Thread | None = None
        if sample:
            self._sampler = threading.Thread(target=self._sample, daemon=True)
            self._sampler.start()

    def _sample(self) -> None:
        while not self._stop_sampling.is_set() and self.popen.poll() is None:
            status = proc_status_kb(self.popen.pid)
            self.peak_rss_kb = max(self.peak_rss_kb, status.get("VmHWM", 0), status.get("VmRSS", 0))
            # The processes it started (a rebuild's replay processes): each one's peak, and
            # the peak of their sum with this one, sampled together.
            total = status.get("VmRSS", 0)
            tree = [self.popen.pid, *descendants(self.popen.pid)]
            for pid in tree:
                cpu = proc_cpu_seconds(pid)
                if cpu is not None:
                    self.cpu_seconds_by_pid[pid] = cpu
            for pid in tree[1:]:
                child = proc_status_kb(pid)
                total += child.get("VmRSS", 0)
                self.peak_rss_by_pid_kb[pid] = max(
                    self.peak_rss_by_pid_kb.get(pid, 0), child.get("VmHWM", 0)
                )
            self.peak_tree_rss_kb = max(self.peak_tree_rss_kb, total)
            self._stop_sampling.wait(0.1)

    @property
    def peak_rss_mb(self) -> float:
        return round(self.peak_rss_kb / 1024, 1)

    @property
    def peak_tree_rss_mb(self) -> float:
        """Peak of the RSS summed over this process and every process it started."""
        return round(max(self.peak_tree_rss_kb, self.peak_rss_kb) / 1024, 1)

    @property
    def tree_cpu_seconds(self) -> float:
        """CPU time used by this process and the processes it started (as last sampled,
        up to 0.1 s before each one ended)."""
        return round(sum(self.cpu_seconds_by_pid.values()), 1)

    @property
    def children_peak_rss_mb(self) -> list[float]:
        """Each started process's own peak RSS (VmHWM), largest first."""
        return sorted(
            (round(kb / 1024, 1) for kb in self.peak_rss_by_pid_kb.values()), reverse=True
        )

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait(self, timeout: float | None = None) -> int:
        code = self.popen.wait(timeout)
        self._stop_sampling.set()
        return code

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (a clean shutdown), then SIGKILL if it does not end in time."""
        if self.alive():
            status = proc_status_kb(self.popen.pid)
            self.peak_rss_kb = max(self.peak_rss_kb, status.get("VmHWM", 0))
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        self._stop_sampling.set()


@dataclass
class Service:
    """``dealtrail serve`` plus ``dealtrail projections run``, as production runs them."""

    db: Database
    log_dir: Path
    port: int = 0
    serve: Proc | None = None
    worker: Proc | None = None
    base_url: str = ""

    def start(self) -> Service:
        """Start the API, wait until it answers, then the worker (not both at once: on a
        fresh database each would create the read-model tables)."""
        data_dir = self.log_dir / "data"
        data_dir.mkdir(parents=True, exist_ok=True)
        env = service_env(self.db, data_dir)
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        cmd = dealtrail_command()
        serve_args = ["serve", "--host", "127.0.0.1", "--port", str(self.port)]
        self.serve = Proc("serve", [*cmd, *serve_args, "--log-level", "warning"], env, self.log_dir)
        wait_healthy(self.base_url, self.serve)
        self.worker = Proc("worker", [*cmd, "projections", "run"], env, self.log_dir)
        say(f"service up at {self.base_url} (worker pid {self.worker.popen.pid})")
        return self

    def head(self) -> int:
        response = httpx.get(self.base_url + "/health", timeout=10)
        response.raise_for_status()
        return int(response.json()["position"])

    def wait_caught_up(self, timeout: float = 600.0) -> float:
        """Wait until every projection has reached the head of the log; seconds waited."""
        started = time.monotonic()
        head = self.head()
        while True:
            states = self.db.projection_states()
            if states and all(position >= head for _, position in states.values()):
                return time.monotonic() - started
            if self.worker is not None and not self.worker.alive():
                raise BenchError(f"the projection worker died:\n{self.worker.tail()}")
            if time.monotonic() - started > timeout:
                raise BenchError(f"projections did not reach position {head} in {timeout:g}s")
            time.sleep(0.05)

    def memory(self) -> dict[str, float]:
        return {
            "serve_peak_rss_mb": self.serve.peak_rss_mb if self.serve else 0.0,
            "worker_peak_rss_mb": self.worker.peak_rss_mb if self.worker else 0.0,
        }

    def stop(self) -> None:
        for proc in (self.worker, self.serve):
            if proc is not None:
                proc.stop()


def wait_healthy(base_url: str, proc: Proc, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise BenchError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.tail()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(base_url + "/health", timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise BenchError(f"{proc.name} did not answer /health in {timeout:g}s:\n{proc.tail()}")


@contextlib.contextmanager
def running_service(db: Database, log_dir: Path) -> Iterator[Service]:
    service = Service(db, log_dir)
    try:
        yield service.start()
    finally:
        service.stop()


# --- the load generator process ---------------------------------------------------------


class LoadGenerator:
    """``python -m bench.loadgen``, a separate process that drives the HTTP load.

    One JSON request per line on its stdin, one JSON answer per line on its stdout.
    """

    def __init__(self) -> None:
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "bench.loadgen"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def run(self, **request: Any) -> dict[str, Any]:
        assert self.popen.stdin is not None and self.popen.stdout is not None
        self.popen.stdin.write(json.dumps(request) + "\n")
        self.popen.stdin.flush()
        line = self.popen.stdout.readline()
        if not line:
            raise BenchError(f"the load generator exited ({self.popen.poll()})")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise BenchError(f"load generator: {answer['error']}")
        return answer

    def close(self) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(Exception):
                self.run(op="quit")
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)


@contextlib.contextmanager
def load_generator() -> Iterator[LoadGenerator]:
    gen = LoadGenerator()
    try:
        yield gen
    finally:
        gen.close()


# --- results and machine ----------------------------------------------------------------


@dataclass
class Run:
    """One invocation of the suite: sizes, where logs go, the results being collected."""

    sizes: Sizes
    output: Path
    backends: list[str]
    log_root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="bench-logs-")))
    results: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    lock: threading.RLock = field(default_factory=threading.RLock)

    def log_dir(self, name: str) -> Path:
        path = self.log_root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def backends_available(self) -> list[str]:
        """The requested backends, without PostgreSQL when it is unreachable."""
        chosen = []
        for backend in self.backends:
            if backend == "postgres":
                problem = postgres_problem()
                if problem:
                    say(f"skipping PostgreSQL: {problem}")
                    self.results.setdefault("skipped", {})["postgres"] = problem
                    continue
            chosen.append(backend)
        return chosen

    def record(self, part: str, backend: str, figures: dict[str, Any]) -> None:
        figures = {"measured_at": now_iso(), "load_average": load_average(), **figures}
        with self.lock:
            self.results.setdefault(part, {})[backend] = figures
            self.save()

    def save(self) -> None:
        """Merge this run's sections into the results file (other parts stay)."""
        with self.lock:
            self._save()

    def _save(self) -> None:
        self.output.parent.mkdir(parents=True, exist_ok=True)
        existing: dict[str, Any] = {}
        if self.output.exists():
            with contextlib.suppress(ValueError, OSError):
                existing = json.loads(self.output.read_text())
        merged = dict(existing)
        for key, value in self.results.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = {**merged[key], **value}
            else:
                merged[key] = value
        merged["machine"] = machine_info()
        merged["updated_at"] = now_iso()
        merged["mode"] = "smoke" if self.sizes.smoke else "full"
        tmp = self.output.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(merged, indent=2, sort_keys=True, default=str) + "\n")
        tmp.replace(self.output)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


_machine: dict[str, Any] | None = None


def machine_info() -> dict[str, Any]:
    """Cores, memory, CPU model, Python and PostgreSQL versions."""
    global _machine
    if _machine is not None:
        return _machine
    info: dict[str, Any] = {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
    }
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["memory_gb"] = round(int(line.split()[1]) / 1024 / 1024, 1)
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    try:
        import psycopg

        with psycopg.connect(admin_url(), connect_timeout=3) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            info["postgres"] = row[0] if row else None
            settings = {}
            for name in ("shared_buffers", "synchronous_commit", "max_connections"):
                value = conn.execute(f"SHOW {name}").fetchone()
                settings[name] = value[0] if value else None
            info["postgres_settings"] = settings
    except Exception:
        info["postgres"] = None
    info["sqlite"] = sqlite3.sqlite_version
    _machine = info
    return info


def run_cli(
    args: list[str], db: Database, log_dir: Path, name: str, timeout: float = 3600.0
) -> tuple[int, float, Proc]:
    """Run a ``dealtrail`` command to completion; (exit code, seconds, process)."""
    env = service_env(db, log_dir / "data")
    started = time.monotonic()
    proc = Proc(name, [*dealtrail_command(), *args], env, log_dir)
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.stop()
        raise BenchError(f"dealtrail {' '.join(args)} took longer than {timeout:g}s") from None
    return code, time.monotonic() - started, proc
