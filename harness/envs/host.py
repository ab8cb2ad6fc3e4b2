"""This machine as the engine sees it: which CPUs a run may use and how its children are pinned
to them, how much memory is left for another worker, whether a worker's threads have gone
quiet, its GPU (one finding: find_gpu) and what cannot run here, and what the machine is and
which code runs on it (a results file's `machine` and `git` records)."""
from __future__ import annotations

import functools
import os
import platform
import re
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from impls.registry import get_spec

from ..errors import UsageError
from .interpreters import ROOT, project_root

# Settling between participants: a library's idle threads keep spinning after a round
# (OpenBLAS ~0.1 s, ONNX Runtime, OpenMP), and on 2 cores they slowed whoever ran next by a
# median 20-40% in the first smoke runs (docs/measurement.md). So the scheduler waits until
# the worker that just ran has gone quiet before the next round starts.
SETTLE_POLL = 0.001  # seconds between looks at the finished worker's threads
SETTLE_QUIET = 2  # consecutive looks with none of its threads running make it quiet
SETTLE_CAP = 0.3  # never wait longer than this for one worker


# ---- CPUs ------------------------------------------------------------------------------

def usable_cpus() -> list[int] | None:
    """The CPUs this process may run on, in order; None where the platform cannot tell."""
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None


def worker_cpus(threads: int | None, available: "list[int] | None" = None) -> list[int] | None:
    """The CPUs a run's workers are pinned to: the last `threads` CPUs this process may use,
    when `threads` is fewer than those; None (no pinning) otherwise.

    Why: on the project's 2-core VM, one-thread workers left to the scheduler ran most rounds
    1.3-1.5x slower than their fastest (median over cells of the 25th percentile over the
    minimum, three smoke runs) and only when placed well at the fastest; pinned to one CPU,
    1.06-1.19x, with half the between-run scatter of the cells' minima (docs/measurement.md,
    "Pinning"). The last CPUs, because CPU 0 takes more of the kernel's own work; the parent,
    which only waits while a round runs, is left unpinned."""
    if not threads:
        return None
    available = usable_cpus() if available is None else available
    if available is None or threads >= len(available):
        return None
    return available[-threads:]


def lane_cpus(lane: int, threads: int | None, jobs: int,
              available: list[int] | None = None) -> list[int] | None:
    """The CPUs lane `lane` (1..jobs) owns: `threads` of them, each lane its own, where the lanes
    fit the CPUs this process may use; None (no pinning) where they do not, or threads is unset.

    Why pin at all: a backend that limits its thread pool through the affinity mask (jax,
    flax, keras-jax: XLA sizes its pool from the mask, impls/jax_impl.py) takes the FIRST
    `threads` CPUs of the mask it inherits, so two such backends in two lanes both landed on
    CPU 0 and left CPU 1 idle (measured: 50% idle during the first lane run, each child at
    half a core). Giving each lane its own CPUs makes every backend's choice the lane's."""
    if not threads:
        return None
    available = usable_cpus() if available is None else available
    if available is None or jobs * threads > len(available) or not 1 <= lane <= jobs:
        return None
    return available[(lane - 1) * threads: lane * threads]


def default_jobs(threads: int | None, cores: int | None = None) -> int:
    """Children that fit the machine side by side (quality lanes, `check --jobs`): the cores
    // threads per child (at least 1)."""
    cores = cores or os.cpu_count() or 1
    return max(1, cores // max(1, threads or cores))


# ---- memory ----------------------------------------------------------------------------

def _meminfo(key: str) -> int | None:
    """A line of Linux's /proc/meminfo in bytes (MemTotal, MemAvailable); None elsewhere."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def mem_available() -> int | None:
    """Bytes of memory available for new processes now (Linux MemAvailable); None elsewhere."""
    return _meminfo("MemAvailable")


def memory_reserve() -> int:
    """Memory to keep available when a worker starts: the larger of 2 GiB (the largest
    worker, keras-torch's, held 0.9 GB after preparing a smoke cell) and a tenth of the
    machine's memory."""
    total = None
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        pass
    return max(2 << 30, (total or 0) // 10)


# ---- a worker's threads ------------------------------------------------------------------

def running_threads(pid: int) -> int | None:
    """How many threads of process `pid` are running or runnable (state R in Linux's
    /proc/PID/task/TID/stat); None where /proc is not there (then nobody waits). Thread state
    and not CPU time: a spinning thread's CPU time is only brought up to date at scheduler
    ticks, so a few milliseconds of it can look idle."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    n = 0
    for t in tids:
        try:
            with open(f"/proc/{pid}/task/{t}/stat", "rb") as f:
                n += f.read().rsplit(b")", 1)[1].split()[0] == b"R"
        except (OSError, IndexError):
            continue  # a thread that ended meanwhile
    return n


def settle(pid: int | None, *, poll: float = SETTLE_POLL, quiet: int = SETTLE_QUIET,
           cap: float = SETTLE_CAP) -> float:
    """Wait until no thread of process `pid` has been running for `quiet` consecutive looks
    `poll` seconds apart, at most `cap` seconds. Returns the seconds waited."""
    t0 = time.perf_counter()
    if not pid or running_threads(pid) is None:
        return 0.0
    calm = 0
    while calm < quiet and time.perf_counter() - t0 < cap:
        n = running_threads(pid)
        calm = calm + 1 if not n else 0
        if calm < quiet:
            time.sleep(poll)
    return time.perf_counter() - t0


# ---- what the machine is, and which code runs on it -----------------------------------------

def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.lru_cache(maxsize=1)
def find_gpu() -> dict[str, str] | None:
    """This machine's GPU, the one finding every reader uses (the results' `machine`, --device
    gpu's refusal): NVIDIA's as nvidia-smi names it (name, driver, memory); else an NVIDIA driver
    with a device (/proc/driver/nvidia/gpus, /dev/nvidia0) that nvidia-smi cannot name; else AMD's
    ROCm (/dev/kfd), named by rocm-smi where it is installed. None without any."""
    got = _smi(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"])
    if got:
        name, driver, mem = ([s.strip() for s in got.splitlines()[0].split(",")] + ["?", "?"])[:3]
        return {"name": name, "driver": driver, "memory": mem}
    try:
        nvidia = any(Path("/proc/driver/nvidia/gpus").iterdir())
    except OSError:
        nvidia = False
    if nvidia or Path("/dev/nvidia0").exists():
        return {"name": "NVIDIA GPU", "driver": "nvidia", "memory": "?"}
    if Path("/dev/kfd").exists():
        out = _smi(["rocm-smi", "--showproductname"]) or ""
        card = next((ln.split(":", 2)[-1].strip() for ln in out.splitlines() if "Card series" in ln), "")
        return {"name": card or "AMD ROCm GPU", "driver": "rocm", "memory": "?"}
    return None


def _smi(cmd: list[str]) -> str | None:
    """A vendor tool's output, None where it is missing, fails or says nothing."""
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout.strip() if r.returncode == 0 and r.stdout.strip() else None


def gpu_present() -> bool:
    """Whether this machine has a GPU a backend could use (find_gpu). LSTMBENCH_GPU=1 or 0
    overrides the answer (a GPU these signs miss; tests)."""
    forced = os.environ.get("LSTMBENCH_GPU", "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    return find_gpu() is not None


def require_device(device: str, precision: str, backends: "list[str] | tuple[str, ...]" = (),
                   here: bool = True) -> None:
    """Refuse, before any worker starts, what cannot run here (`run` and `check` alike): a
    backend whose spec lacks the device, tf32 off a GPU, --device gpu on a machine without one
    (where the work runs `here`; a cluster's nodes are chosen by harness.cluster.tasks)."""
    for b in backends:
        if device not in get_spec(b).devices:
            raise UsageError(f"backend {b} does not run on {device}")
    if precision == "tf32" and device != "gpu":
        raise UsageError("--precision tf32 exists only on a GPU: add --device gpu")
    if device == "gpu" and here and not gpu_present():
        raise UsageError("--device gpu: this machine has no GPU (no NVIDIA or ROCm driver found); "
                         "run on the CPU (--device cpu), or set LSTMBENCH_GPU=1 if it has one "
                         "this check misses")


def machine_info() -> dict[str, Any]:
    cpu = _cpu_model()
    gpu = find_gpu()
    return {"hostname": socket.gethostname(), "cpu": cpu, "cores": os.cpu_count(),
            "memory_bytes": _meminfo("MemTotal"), "os": platform.platform(), "arch": platform.machine(),
            "gpu": gpu, "slug": machine_slug(cpu, os.cpu_count() or 0, gpu)}


def machine_slug(cpu: str, cores: int, gpu: dict[str, str] | None) -> str:
    """A stable folder name for a kind of machine (container hostnames are random)."""
    if os.environ.get("LSTMBENCH_MACHINE"):
        return re.sub(r"[^A-Za-z0-9_.-]+", "-", os.environ["LSTMBENCH_MACHINE"])
    words = re.sub(r"\(R\)|\(TM\)|CPU|Processor|[@].*$", "", cpu)
    base = f"{re.sub(r'[^a-z0-9]+', '-', words.lower()).strip('-')[:40]}-{cores}c"
    if gpu:
        base += "-" + re.sub(r"[^a-z0-9]+", "-", gpu["name"].lower()).strip("-")
    return base


def _code_checkout() -> Path:
    """Where to ask git: the checkout in the working directory, else the code's folder."""
    return project_root() or ROOT


def git_info() -> dict[str, Any]:
    """The commit of the code that runs, and whether it has uncommitted changes (no commit
    where git or a repository is not there)."""
    def git(*args: str) -> str:
        try:
            r = subprocess.run(["git", *args], cwd=_code_checkout(), capture_output=True, text=True)
        except OSError:  # no git on this machine
            return ""
        return r.stdout.strip() if r.returncode == 0 else ""
    return {"commit": git("rev-parse", "HEAD") or None,
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
