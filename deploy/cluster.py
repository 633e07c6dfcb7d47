"""make cluster: the service on several gunicorn "hosts" behind HAProxy, all on this machine.

    client --> HAProxy :PORT        deploy/haproxy.cfg: checks /readyz, retries GETs elsewhere
                 |-- host 1: gunicorn --+--> PostgreSQL 127.0.0.1:5432, shared
                 |-- host 2: gunicorn --+--> the stand-in upstream API
                 `-- ...                `--> Dask scheduler --> Dask worker x M (prime checks)

Every process listens on 127.0.0.1 only and is started in a session of its own (dev/harness.py);
Ctrl-C or SIGTERM stops them all, newest first. The hosts share the machine's cores: each runs
on cores / hosts of them, with a worker per core, as if it were a machine of its own; in all
they have as many workers as one host of `make run`.
"""
import argparse
import os
import signal
import string
import sys
import tempfile
from contextlib import ExitStack, contextmanager
from pathlib import Path

import sqlalchemy.exc

from config import Config, ToolConfig
from dev import harness
from services.db import init_db

HERE = Path(__file__).resolve().parent
POSTGRES_URL = ToolConfig.POSTGRES_URL
# Of PostgreSQL's default max_connections (100), what all hosts may hold at once: DB_POOL_SIZE of
# each worker is its share. A read holds a connection only for its query, so a few suffice.
DB_CONNECTIONS = 64
CHECK_INTERVAL = "500ms"
MAXCONN = 8192


class Cluster:
    """The processes of a multi-host deployment, each a harness.Service, stopped with it."""

    def __init__(self, stack, database_url, host_count):
        self._stack = stack
        self.data_dir = stack.enter_context(tempfile.TemporaryDirectory())
        self.database_url = database_url
        self.api_url = None
        self.scheduler = None
        self.dask_workers = []
        self.hosts = []
        self.balancer = None
        self.host_env = {}
        self.host_count = host_count

    def start(self, service):
        """Have the cluster stop this started Service (newest first); return it."""
        self._stack.callback(service.stop)
        return service

    def start_host(self, index, port=None):
        """Start gunicorn host `index` (on `port`, a free one by default) on the CPUs of
        host_cpus(index); return its Service."""
        return self.start(harness.start_gunicorn(
            self.api_url, self.data_dir, port=port, cpus=host_cpus(index, self.host_count),
            DATABASE_URL=self.database_url, **self.host_env))

    def restart_host(self, index):
        """Start host `index` again on its own port, after it was stopped or killed."""
        self.hosts[index].stop(signal.SIGKILL)  # whatever of it is left
        self.hosts[index] = self.start_host(index, self.hosts[index].port)
        return self.hosts[index]


def host_cpus(index, hosts):
    """The CPUs host `index` of `hosts` runs on: a share of this machine's of its own, as if it
    were a machine of its own (each host pins its workers among them, PIN_WORKERS)."""
    cpus = sorted(os.sched_getaffinity(0))
    share = max(1, len(cpus) // hosts)
    start = index * share % len(cpus)
    return set(cpus[start:start + share])


@contextmanager
def cluster(hosts=2, dask_workers=2, port=None, api_url=None, database_url=POSTGRES_URL,
            **host_env):
    """Start the deployment: Dask scheduler and workers, `hosts` gunicorn hosts, HAProxy on
    `port` (a free one by default) in front; yield the Cluster and stop everything after.

    api_url: the upstream API; by default a stand-in started here with the seed's latency.
    host_env: more settings for every host (e.g. WEB_THREADS).
    """
    with ExitStack() as stack:
        deployment = Cluster(stack, database_url, hosts)
        deployment.api_url = api_url or deployment.start(
            harness.start_upstream(Config.API_DELAY_MS)).url + "/"
        workers = len(host_cpus(0, hosts))
        env = {"WEB_WORKERS": workers, "DB_POOL_SIZE": max(1, DB_CONNECTIONS // (hosts * workers))}
        if dask_workers:
            deployment.scheduler = deployment.start(harness.start_dask_scheduler())
            deployment.dask_workers = [
                deployment.start(harness.start_dask_worker(deployment.scheduler, f"worker-{i}"))
                for i in range(1, dask_workers + 1)]
            env["CPU_EXECUTOR"] = f"dask://127.0.0.1:{deployment.scheduler.port}"
        deployment.host_env = {**env, **host_env}
        # Seeded here, once: hosts starting side by side would race to create the table.
        init_db(database_url)
        deployment.hosts = [deployment.start_host(i) for i in range(hosts)]
        deployment.balancer = deployment.start(start_balancer(
            [host.port for host in deployment.hosts], port or harness.free_port(),
            Path(deployment.data_dir) / "haproxy.cfg"))
        yield deployment


def haproxy_config(host_ports, port):
    """deploy/haproxy.cfg for hosts on `host_ports` of 127.0.0.1, HAProxy listening on `port`."""
    servers = "\n".join(f"    server host{i} 127.0.0.1:{host_port}"
                        for i, host_port in enumerate(host_ports, 1))
    template = string.Template((HERE / "haproxy.cfg").read_text())
    return template.substitute(bind=f"127.0.0.1:{port}", servers=servers, maxconn=MAXCONN,
                               check_interval=CHECK_INTERVAL)


def start_balancer(host_ports, port, config_path):
    """Start HAProxy in the foreground (-db) with haproxy_config(); return its Service."""
    haproxy = harness.ensure_installed("haproxy", "haproxy")
    if not haproxy:
        raise RuntimeError("HAProxy is needed: apt-get install haproxy")
    config_path.write_text(haproxy_config(host_ports, port))
    return harness.Service([haproxy, "-db", "-f", str(config_path)], port, ready_path="/healthz")


def main(argv=None):
    """Start the cluster, say where each part listens, and keep it up until Ctrl-C or SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=2, help="gunicorn hosts (default 2)")
    parser.add_argument("--dask-workers", type=int, default=2,
                        help="Dask workers; 0 keeps prime checks on each host's process pool")
    parser.add_argument("--database-url", default=POSTGRES_URL, help="the shared database")
    args = parser.parse_args(argv)
    # SIGTERM ends the wait below like Ctrl-C, so that the with-block stops every process.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        with cluster(args.hosts, args.dask_workers, Config.PORT,
                     database_url=args.database_url) as deployment:
            _announce(deployment)
            try:
                signal.pause()
            except KeyboardInterrupt:
                print("stopping", flush=True)
    except sqlalchemy.exc.SQLAlchemyError as exc:  # from seeding, before any host started
        sys.exit(f"make cluster needs a shared database; {args.database_url}: {exc}")


def _announce(deployment):
    print(f"HAProxy   {deployment.balancer.url}/  (Ctrl-C stops everything)")
    for i, host in enumerate(deployment.hosts, 1):
        print(f"host{i}     {host.url}/")
    if deployment.scheduler:
        print(f"Dask      tcp://127.0.0.1:{deployment.scheduler.port}, "
              f"{len(deployment.dask_workers)} workers")
    print(f"database  {deployment.database_url}", flush=True)


if __name__ == "__main__":
    main()
