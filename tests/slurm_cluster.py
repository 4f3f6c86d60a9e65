"""A real single-node SLURM on 127.0.0.1 for the cluster test (Debian's slurm-wlm and munge, docs/cluster.md).

    with SlurmCluster(tmp_path) as cluster:     # SLURM + munge must be installed: ensure_installed()
        subprocess.run([...], env=cluster.env)  # SLURM_CONF points the clients at this controller

slurm.conf and gres.conf are written to /etc/slurm (where job steps look; files already there are restored on
exit); munged, slurmctld and slurmd are started with their pid files and stopped by those pids on exit. No
cgroups, no accounting (squeue is the status command; finished jobs stay in scontrol's records for MinJobAge, an
hour, so that a test can check what ran), one fake GPU (gres on /dev/null) so that GPU requests are scheduled.
:func:`unavailable` says why a cluster cannot be started here, or None.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

APT = ["slurm-wlm", "munge"]
BINARIES = ["slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "munged"]


def _which(name: str) -> str | None:
    return shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.path.exists(p)), None)


LOCK = "/tmp/wsimil-slurm-test.lock"


def _pidof(name: str) -> bool:
    """Whether a process of that exact name runs (from /proc; read only)."""
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if (d / "comm").read_text().strip() == name:
                    return True
            except OSError:
                continue
    return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def ensure_installed() -> str | None:
    """Install SLURM and munge with apt when they are missing; the reason when that is not possible."""
    if all(_which(b) for b in BINARIES):
        return None
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "SLURM is not installed and cannot be (needs root and apt-get: apt-get install slurm-wlm munge)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *APT]):
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        if res.returncode != 0:
            return f"{' '.join(cmd)} failed: {res.stderr.strip()[-300:]}"
    missing = [b for b in BINARIES if not _which(b)]
    return f"SLURM binaries missing after apt-get install: {missing}" if missing else None


class SlurmCluster:
    """slurmctld + slurmd (node ``localhost``, partition ``debug``) and munged, all on 127.0.0.1."""

    def __init__(self, root: Path, cpus: int | None = None, memory_mb: int = 16000):
        self.root = Path(root)
        self.cpus = cpus or os.cpu_count() or 1
        self.memory_mb = memory_mb
        # The standard location: job steps (srun inside a batch job) read it there whatever the environment;
        # a file already there is put back on stop.
        self.conf = Path("/etc/slurm/slurm.conf")
        self._saved: dict[Path, bytes] = {}
        self.pids: dict[str, Path] = {}
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self._lock = None
        # slurmd makes a Unix socket per job step in its spool folder, <spool>/localhost_<job>.<step>, and a
        # socket path has at most 108 bytes: under pytest's tmp_path a two-digit job id already failed to
        # launch ("launch failed requeued held"), so the spool folder is a short one in /tmp
        self.spool: Path | None = None

    # -- set-up ------------------------------------------------------------------------------------------
    def _write_config(self) -> None:
        for d in ("state", "log", "run"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        self.spool = Path(tempfile.mkdtemp(prefix="wsimil-slurmd-", dir="/tmp"))
        if len(f"{self.spool}/localhost_{10**9}.{2**32 - 5}") > 107:
            raise RuntimeError(f"{self.spool}: too long for slurmd's job-step sockets (108 bytes with the job id)")
        self.conf.parent.mkdir(parents=True, exist_ok=True)
        for f in (self.conf, self.conf.parent / "gres.conf"):
            if f.exists():
                self._saved[f] = f.read_bytes()
        r = self.root
        self.conf.write_text(f"""ClusterName=wsimil-test
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
ReturnToService=2
MinJobAge=3600
StateSaveLocation={r}/state
SlurmdSpoolDir={self.spool}
SlurmctldPidFile={r}/run/slurmctld.pid
SlurmdPidFile={r}/run/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
NodeName=localhost NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.memory_mb} Gres=gpu:1 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
""")
        # a fake GPU: without a gres.conf the node is INVAL
        (self.conf.parent / "gres.conf").write_text("AutoDetect=off\nNodeName=localhost Name=gpu File=/dev/null\n")
        self.pids = {"slurmctld": r / "run" / "slurmctld.pid", "slurmd": r / "run" / "slurmd.pid",
                     "munged": Path("/run/munge/munged.pid")}

    def _start_munge(self) -> None:
        """munged on its standard socket (SLURM's auth/munge talks to that one); an already running munged is
        used and left running."""
        for d in ("/run/munge", "/var/log/munge", "/var/lib/munge"):
            subprocess.run(["install", "-d", "-o", "munge", "-g", "munge", d], check=True)
        if not Path("/etc/munge/munge.key").exists():
            subprocess.run(["/usr/sbin/mungekey", "--create"], check=True)
            shutil.chown("/etc/munge/munge.key", "munge", "munge")
        system_pid = Path("/run/munge/munged.pid")
        if system_pid.exists() and _alive(int(system_pid.read_text().split()[0])):
            self.pids.pop("munged")
            return
        res = subprocess.run(["runuser", "-u", "munge", "--", _which("munged")], capture_output=True, text=True,
                             timeout=30)
        if res.returncode != 0:
            raise RuntimeError(f"munged did not start: {res.stderr.strip()}")
        self.pids["munged"] = system_pid

    def _acquire(self) -> None:
        """One test cluster per machine (it owns /etc/slurm and the SLURM ports): a lock, or RuntimeError."""
        self._lock = open(LOCK, "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            self._lock = None
            raise RuntimeError(f"another test cluster holds {LOCK}") from None
        running = [n for n in ("slurmctld", "slurmd") if _pidof(n)]
        if running:
            self._release()
            raise RuntimeError(f"{', '.join(running)} already running here (not started by this test)")

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def start(self, timeout: float = 60.0) -> "SlurmCluster":
        self._acquire()
        try:
            return self._start(timeout)
        except BaseException:
            self.stop()
            raise

    def _start(self, timeout: float) -> "SlurmCluster":
        self._write_config()
        self._start_munge()
        subprocess.run([_which("slurmctld"), "-f", str(self.conf)], env=self.env, check=True, capture_output=True,
                       timeout=30)
        subprocess.run([_which("slurmd"), "-f", str(self.conf), "-N", "localhost"], env=self.env, check=True,
                       capture_output=True, timeout=30)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            res = subprocess.run(["sinfo", "-h", "-o", "%T"], env=self.env, capture_output=True, text=True)
            if res.returncode == 0 and res.stdout.strip() in ("idle", "mixed", "allocated"):
                return self
            time.sleep(0.5)
        raise RuntimeError(f"the SLURM node did not come up in {timeout:.0f} s: sinfo says {res.stdout.strip()!r} "
                           f"{res.stderr.strip()!r}; logs in {self.root / 'log'}")

    # -- tear-down -----------------------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop every daemon this cluster started, by its pid file (slurmd, slurmctld, then munged)."""
        for name in ("slurmd", "slurmctld", "munged"):
            pid_file = self.pids.get(name)
            if not pid_file or not pid_file.exists():
                continue
            pid = int(pid_file.read_text().split()[0])
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            for _ in range(100):
                if not _alive(pid):
                    break
                time.sleep(0.1)
            else:
                os.kill(pid, signal.SIGKILL)
        for f in (self.conf, self.conf.parent / "gres.conf"):
            if f in self._saved:
                f.write_bytes(self._saved[f])
            elif self.pids:
                f.unlink(missing_ok=True)
        self.pids = {}
        self._saved = {}
        if self.spool is not None:
            shutil.rmtree(self.spool, ignore_errors=True)
            self.spool = None
        self._release()

    def __enter__(self) -> "SlurmCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def unavailable() -> str | None:
    """Why a SLURM cluster cannot be started here (None when it can be tried). Nothing is installed here:
    `python3 tests/slurm_cluster.py install` (what `make test` does as root) installs SLURM with apt."""
    if os.name != "posix":
        return "SLURM needs a POSIX system"
    if os.geteuid() != 0:
        return "the test cluster runs its daemons as root"
    missing = [b for b in BINARIES if not _which(b)]
    if missing:
        return (f"{', '.join(missing)} not installed (apt-get install slurm-wlm munge, or "
                "`python3 tests/slurm_cluster.py install`, as `make test` does)")
    return None


if __name__ == "__main__":  # make test: `python3 tests/slurm_cluster.py install` (apt-get, as root)
    import sys

    if sys.argv[1:] != ["install"]:
        sys.exit("usage: python3 tests/slurm_cluster.py install")
    problem = ensure_installed()
    if problem:
        sys.exit(problem)
