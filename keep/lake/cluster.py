"""A real Spark standalone cluster (one master, one worker) on loopback, for tests and demos.

The same jobs that run on ``local[N]`` run unchanged on a cluster: only
``settings.spark.master`` changes. This module starts such a cluster on this machine, with
the Spark that ships in the pyspark wheel (``pyspark/bin/spark-class``; the wheel has no
``sbin/start-*.sh`` scripts)::

    from keep.lake.cluster import start_standalone

    with start_standalone(Path("var/cluster"), cores=1, memory="1g") as cluster:
        env = {**os.environ, **cluster.driver_env(), "KEEP_SPARK__MASTER": cluster.master_url}
        subprocess.run([sys.executable, "-m", "keep.flows.cli", "ingest", "--ds", "2026-01-01"],
                       env=env, check=True)

or, from a shell, ``python -m keep.lake.cluster var/cluster`` starts one and prints its master
URL until interrupted.

Master and worker run as child processes in their own process groups (executors and their
Python workers, started by the worker, belong to the worker's group), with their logs in
``work_dir`` (``master.log``, ``worker.log``; executor logs under ``work_dir/work``).
``stop()`` terminates both groups and waits for them (then kills what is left).

Drivers reach the cluster on 127.0.0.1: give them ``driver_env()`` (``SPARK_LOCAL_IP``)
and, if you like, ``client_conf()`` as ``settings.spark.extra_conf``. Delta's jars need no
extra set-up: ``spark.jars`` (local files, see ``keep.lake.spark``) is served by the driver and
fetched by every executor onto its class path.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from keep.core.errors import KeepError
from keep.lake.spark import check_java

HOST = "127.0.0.1"
MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"

# Read by master and worker (``--properties-file``): no REST submission server (it would
# take the fixed port 6066), no reverse proxy; executor folders stay for post-mortems.
_DAEMON_PROPERTIES = {
    "spark.master.rest.enabled": "false",
    "spark.ui.reverseProxy": "false",
    "spark.worker.cleanup.enabled": "false",
}


class ClusterError(KeepError):
    """The standalone cluster did not come up (the message carries the logs' tails)."""


def spark_home() -> Path:
    """The Spark distribution inside the installed pyspark wheel."""
    import pyspark

    return Path(pyspark.__file__).resolve().parent


def spark_class() -> Path:
    return spark_home() / "bin" / "spark-class"


def free_port() -> int:
    """A TCP port free on loopback right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"({path} unreadable)"
    return "\n".join(text.splitlines()[-lines:])


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group ``pgid``."""
    import psutil

    members = []
    for proc in psutil.process_iter(["pid", "status"]):
        with contextlib.suppress(psutil.Error, OSError):
            if proc.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(proc.pid) == pgid:
                members.append(proc.pid)
    return members


@dataclass
class StandaloneCluster:
    """A running master + worker; stop it with ``stop()`` or use it as a context manager."""

    work_dir: Path
    master_port: int
    webui_port: int
    cores: int
    memory: str
    master: subprocess.Popen[bytes]
    worker: subprocess.Popen[bytes]
    _logs: list[IO[bytes]] = field(default_factory=list, repr=False)
    _stopped: bool = field(default=False, repr=False)

    @property
    def master_url(self) -> str:
        """``spark://127.0.0.1:<port>``: the value for ``spark.master``."""
        return f"spark://{HOST}:{self.master_port}"

    @property
    def webui_url(self) -> str:
        return f"http://{HOST}:{self.webui_port}"

    @property
    def pids(self) -> list[int]:
        """PIDs of the master and worker JVMs (each leads its own process group)."""
        return [self.master.pid, self.worker.pid]

    def processes(self) -> list[int]:
        """Every live process of the cluster: master, worker, executors, their Python workers."""
        return sorted(p for pgid in self.pids for p in _group_members(pgid))

    def status(self, timeout: float = 5.0) -> dict[str, Any]:
        """The master's state as JSON (``/json/``: workers, aliveworkers, apps...)."""
        with urllib.request.urlopen(f"{self.webui_url}/json/", timeout=timeout) as response:
            return dict(json.load(response))

    def driver_env(self) -> dict[str, str]:
        """Environment for a driver process: loopback address, this very interpreter."""
        return {"SPARK_LOCAL_IP": HOST, "PYSPARK_PYTHON": sys.executable}

    def client_conf(self) -> dict[str, str]:
        """``spark.*`` settings for a driver of this cluster (``settings.spark.extra_conf``).

        The executor gets the worker's cores and memory (the default executor memory, 1g,
        would never be granted by a smaller worker and the application would wait forever).
        """
        return {
            "spark.driver.host": HOST,
            "spark.driver.bindAddress": HOST,
            "spark.executor.memory": self.memory,
            "spark.executor.cores": str(self.cores),
            "spark.cores.max": str(self.cores),
        }

    def logs(self, lines: int = 30) -> str:
        """Tails of the master's and the worker's logs (for error messages)."""
        return "\n".join(
            f"--- {name} (last {lines} lines):\n{log_tail(self.work_dir / name, lines)}"
            for name in ("master.log", "worker.log")
        )

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Block until the master reports at least one alive worker, else ClusterError."""
        deadline = time.monotonic() + timeout
        last: str = "no answer yet"
        while time.monotonic() < deadline:
            for name, proc in (("master", self.master), ("worker", self.worker)):
                if proc.poll() is not None:
                    raise ClusterError(
                        f"Spark {name} exited with code {proc.returncode} while starting.\n"
                        + self.logs()
                    )
            try:
                state = self.status(timeout=2.0)
                if int(state.get("aliveworkers", 0)) >= 1:
                    return
                last = f"aliveworkers={state.get('aliveworkers')} status={state.get('status')}"
            except (urllib.error.URLError, OSError, ValueError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            time.sleep(0.5)
        raise ClusterError(
            f"No Spark worker registered with {self.master_url} within {timeout:.0f} s "
            f"(last check of {self.webui_url}/json/: {last}).\n" + self.logs()
        )

    def stop(self, timeout: float = 30.0) -> None:
        """Terminate worker (with its executors) then master; kill what outlives ``timeout``."""
        if self._stopped:
            return
        self._stopped = True
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)
        for proc in (self.worker, self.master):
            _terminate_group(proc, timeout)
        for fh in self._logs:
            fh.close()

    def __enter__(self) -> StandaloneCluster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _terminate_group(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM the process group led by ``proc``, wait, then SIGKILL the rest."""
    pgid = proc.pid  # start_new_session=True: the child leads its own group
    _signal_group(pgid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _signal_group(pgid, signal.SIGKILL)
        proc.wait(timeout=timeout)
    # Executors (children of the worker) may outlive it by a moment.
    deadline = time.monotonic() + timeout
    while _group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _group_members(pgid):
        _signal_group(pgid, signal.SIGKILL)


def _launch(
    args: list[str], log: IO[bytes], env: dict[str, str], cwd: Path
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["bash", str(spark_class()), *args],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        cwd=cwd,
        start_new_session=True,  # own process group: stop() signals the whole group
    )


def start_standalone(
    work_dir: Path,
    *,
    cores: int = 1,
    memory: str = "1g",
    timeout: float = 120.0,
    daemon_memory: str = "512m",
) -> StandaloneCluster:
    """Start a master and one worker (``cores``, ``memory``) on 127.0.0.1; wait for them.

    Ports are picked free on loopback. ``daemon_memory`` is the heap of the master and
    worker JVMs themselves (executors get ``memory``). Raises ClusterError with the logs'
    tails if the worker has not registered within ``timeout`` seconds (nothing is left
    running then), SetupError if Java is missing.
    """
    check_java()
    work_dir = Path(work_dir).resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    (work_dir / "work").mkdir(exist_ok=True)
    (work_dir / "local").mkdir(exist_ok=True)
    properties = work_dir / "spark-daemons.conf"
    properties.write_text("".join(f"{k} {v}\n" for k, v in _DAEMON_PROPERTIES.items()))
    env = {
        **os.environ,
        "SPARK_HOME": str(spark_home()),  # the wheel's Spark, whatever the caller's SPARK_HOME
        "PYSPARK_PYTHON": sys.executable,
        "SPARK_LOCAL_IP": HOST,
        "SPARK_NO_DAEMONIZE": "1",
        "SPARK_DAEMON_MEMORY": daemon_memory,
        "SPARK_LOCAL_DIRS": str(work_dir / "local"),
        "SPARK_LOG_DIR": str(work_dir),
    }
    master_port, webui_port, worker_webui_port = free_port(), free_port(), free_port()
    while len({master_port, webui_port, worker_webui_port}) < 3:
        webui_port, worker_webui_port = free_port(), free_port()
    logs: list[IO[bytes]] = [(work_dir / n).open("ab") for n in ("master.log", "worker.log")]
    master = _launch(
        [
            MASTER_CLASS,
            "--host",
            HOST,
            "--port",
            str(master_port),
            "--webui-port",
            str(webui_port),
            "--properties-file",
            str(properties),
        ],
        logs[0],
        env,
        work_dir,
    )
    worker: subprocess.Popen[bytes] | None = None
    try:
        worker = _launch(
            [
                WORKER_CLASS,
                f"spark://{HOST}:{master_port}",
                "--host",
                HOST,
                "--cores",
                str(cores),
                "--memory",
                memory,
                "--work-dir",
                str(work_dir / "work"),
                "--webui-port",
                str(worker_webui_port),
                "--properties-file",
                str(properties),
            ],
            logs[1],
            env,
            work_dir,
        )
        cluster = StandaloneCluster(
            work_dir=work_dir,
            master_port=master_port,
            webui_port=webui_port,
            cores=cores,
            memory=memory,
            master=master,
            worker=worker,
            _logs=logs,
        )
        atexit.register(cluster.stop)
        try:
            cluster.wait_ready(timeout)
        except BaseException:
            cluster.stop()
            raise
        return cluster
    except BaseException:
        if worker is None:  # the worker never started: clean up the master alone
            _terminate_group(master, 10.0)
            for fh in logs:
                fh.close()
        raise


def main(argv: list[str] | None = None) -> None:
    """``python -m keep.lake.cluster WORK_DIR [--cores N] [--memory M]``: run one until Ctrl-C."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m keep.lake.cluster", description=main.__doc__)
    parser.add_argument("work_dir", type=Path)
    parser.add_argument("--cores", type=int, default=1)
    parser.add_argument("--memory", default="1g")
    args = parser.parse_args(argv)
    with start_standalone(args.work_dir, cores=args.cores, memory=args.memory) as cluster:
        print(
            f"master: {cluster.master_url}  web UI: {cluster.webui_url}  logs: {cluster.work_dir}"
        )
        print(f"use: KEEP_SPARK__MASTER={cluster.master_url} SPARK_LOCAL_IP={HOST} keep ...")
        with contextlib.suppress(KeyboardInterrupt):
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
            while cluster.master.poll() is None and cluster.worker.poll() is None:
                time.sleep(1)


if __name__ == "__main__":
    main()
