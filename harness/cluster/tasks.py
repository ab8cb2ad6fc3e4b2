"""Work on a Ray cluster (`--cluster ADDRESS`): what runs on the nodes, and the driver's side of
submitting it, getting it back, and losing a node on the way. Ray is imported only here and only
when --cluster is given (`pip install 'lstmbench[cluster]'`); without it nothing changes.

Nodes. Every node that takes lstmbench work is started with the custom resource
`lstmbench_node: 1` and, optionally, a kind label (`ray start ... --resources
'{"lstmbench_node": 1}' --labels lstmbench/kind=cpu-2c`); a node without the label is of the
kind its machine slug names (harness.envs.host.machine_slug). Before anything runs, the driver
asks every such node who it is (a function made at run time, sent by value: a node with other
or no lstmbench answers rather than failing to import) and refuses, in one line naming the node,
one whose lstmbench (version and a digest of the harness/ and impls/ sources) differs from its
own: nodes run their own installs and environments (`lstmbench setup` there), which the results
then name truthfully.

Workloads are exclusive: one task per workload asks for the whole `lstmbench_node` of a node
(and no CPU), so no other lstmbench workload or lane shares the machine while it times; it
runs the local engine there (harness.engine.executor.LocalExecutor: its workers, probe,
interleaved rounds) and streams back where it started, then its journal record. Lanes (a
backend's check cases, a quality run's training) pack: they ask for their threads' CPUs and a
sliver of `lstmbench_node`, so they share nodes with each other but never with a workload.

Failures. Ray's own retries are off (max_retries=0): a node lost under a workload raises
NodeDiedError in the driver, which records the try (node, what happened, seconds) and submits
the workload again to a live node of the same kind, at most MAX_TRIES tries; a workload whose
every try was lost is recorded as failed ("lost") and the rest goes on. A try silent for
NO_NEWS_S seconds after it started (a node that froze without closing its connections, which
Ray reports only after minutes) counts as lost too. Ctrl-C or SIGTERM in the driver cancels
every outstanding task: gracefully first (KeyboardInterrupt in the task, whose `finally`
stops its worker processes), then by force; the workers die with their task either way
(PR_SET_PDEATHSIG, harness.envs.interpreters)."""
from __future__ import annotations

import hashlib
import importlib
import os
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from ..errors import UsageError

NODE_RESOURCE = "lstmbench_node"  # 1 on every node that takes lstmbench work
KIND_LABEL = "lstmbench/kind"  # a node's machine kind (`ray start --labels lstmbench/kind=K`)
NAME_LABEL = "lstmbench/name"  # a node's name in messages and results (default: its hostname)
PACK = 0.001  # what a packing task (a lane) takes of NODE_RESOURCE: never beside a workload
MAX_TRIES = 3  # tries of a workload, or a lane, whose node is lost
NO_NEWS_S = 3600.0  # a started try silent this long is taken for lost (its node froze)
GRACE_S = 10.0  # after a graceful cancel, the time tasks have before they are cancelled by force

Log = Callable[[str], None]


class ClusterError(UsageError):
    """A problem with --cluster that the user fixes (one line, exit 2)."""


def import_ray() -> Any:
    """Ray, or a one-line error naming the extra that installs it."""
    os.environ.setdefault("RAY_NUM_REDIS_GET_RETRIES", "5")  # a wrong token fails in ~5 s, not ~20
    try:
        import ray
    except ImportError as e:
        if e.name == "ray":
            raise ClusterError("--cluster needs Ray, which is not installed: "
                               "pip install 'lstmbench[cluster]'") from None
        raise ClusterError(f"--cluster: Ray is installed but does not import ({e}); reinstall it: "
                           "pip install --force-reinstall 'lstmbench[cluster]'") from None
    return ray


def check_address(address: str, timeout: float = 5.0) -> None:
    """HOST:PORT must answer before ray.init, which otherwise retries a dead address for many
    minutes; `auto` is Ray's; ray:// (Ray Client) is refused: it cannot stream a workload's
    progress back, and its client server failed to start in 3 of 11 tries here."""
    if address == "auto":
        return
    if address.startswith("ray://"):
        raise ClusterError(f"--cluster {address}: Ray Client addresses are not supported; run lstmbench "
                           "on a node of the cluster and give --cluster auto (or the head's HOST:PORT)")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ClusterError(f"--cluster {address}: give the head's HOST:PORT (`ray start --head --port "
                           "PORT` prints it) or auto")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        raise ClusterError(f"--cluster {address}: no Ray head answers there ({e.strerror or e}); start "
                           "one with `ray start --head --port PORT`") from None


def connect(address: str) -> Any:
    """Join the cluster (before the run's signal handlers are installed: ray.init installs a
    SIGTERM handler of its own, which the run's then replaces)."""
    ray = import_ray()
    check_address(address)
    if not ray.is_initialized():
        try:
            ray.init(address=address, log_to_driver=False, namespace="lstmbench",
                     logging_level="warning")  # no "Connecting to existing Ray cluster" lines
        except ConnectionError as e:
            raise ClusterError(f"--cluster {address}: could not join the cluster "
                               f"({str(e).splitlines()[0] if str(e) else type(e).__name__}); a cluster "
                               "with token auth needs RAY_AUTH_MODE=token and its token "
                               "(RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token)") from None
    return ray


# ---- who the nodes are -------------------------------------------------------------------------

def code_identity() -> dict[str, Any]:
    """This process's lstmbench: version, commit, and a digest of the harness/ and impls/ sources
    (which catches uncommitted edits and installs without git)."""
    import harness
    from importlib import metadata
    root = Path(harness.__file__).resolve().parent.parent
    h = hashlib.sha256()
    for pkg in ("harness", "impls"):
        for f in sorted((root / pkg).rglob("*.py")):
            h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes() + b"\0")
    try:
        version: str | None = metadata.version("lstmbench")
    except metadata.PackageNotFoundError:
        version = None
    from ..envs.host import git_info
    return {"version": version, "commit": git_info().get("commit"), "digest": h.hexdigest()[:16]}


def _identity_probe() -> Callable[[], dict[str, Any]]:
    """The identity function, made at run time so that Ray sends it by value: it runs on a node
    whose lstmbench is another, or missing, and says so instead of failing to import."""
    def probe() -> dict[str, Any]:
        import ray
        ctx = ray.get_runtime_context()
        out: dict[str, Any] = {"node_id": ctx.get_node_id(), "labels": dict(ctx.get_node_labels())}
        try:
            try:
                from harness.cluster.tasks import code_identity as ident
                from harness.envs.host import machine_info
            except ModuleNotFoundError:  # an lstmbench of the layout before harness/cluster/
                from harness.engine.cluster import code_identity as ident  # type: ignore[no-redef]
                from harness.engine.host import machine_info  # type: ignore[no-redef]
            out.update(code=ident(), machine=machine_info())
        except Exception as e:  # noqa: BLE001 - no lstmbench, or one without this module
            import socket as s
            out.update(code=None, error=f"{type(e).__name__}: {e}", machine={"hostname": s.gethostname()})
        return out
    return probe


@dataclass
class Node:
    id: str
    name: str
    kind: str
    cpus: float
    machine: dict[str, Any]

    @property
    def gpu(self) -> bool:
        return bool(self.machine.get("gpu"))


def inventory(ray: Any, mine: dict[str, Any] | None = None) -> list[Node]:
    """Every live node with NODE_RESOURCE, asked who it is; a node whose lstmbench differs from
    this driver's is refused in one line naming it."""
    mine = mine or code_identity()
    live = [n for n in ray.nodes() if n.get("Alive") and NODE_RESOURCE in (n.get("Resources") or {})]
    if not live:
        raise ClusterError(f"the cluster has no node for lstmbench: start its nodes with --resources "
                           f"'{{\"{NODE_RESOURCE}\": 1}}' (README, \"Running on a Ray cluster\")")
    probe = ray.remote(num_cpus=0, max_retries=0)(_identity_probe())
    refs = [probe.options(label_selector={"ray.io/node-id": n["NodeID"]}).remote() for n in live]
    out = []
    for n, ident in zip(live, ray.get(refs, timeout=600)):
        labels = ident.get("labels") or {}
        name = labels.get(NAME_LABEL) or ident["machine"].get("hostname") or n["NodeID"][:8]
        theirs = ident.get("code")
        if theirs is None:
            raise ClusterError(f"node {name} ({n['NodeID'][:8]}) has no usable lstmbench "
                               f"({ident.get('error')}): install this commit in the environment that runs "
                               "`ray start` there, or leave the node out of the cluster")
        if (theirs["digest"], theirs["version"]) != (mine["digest"], mine["version"]):
            raise ClusterError(
                f"node {name} ({n['NodeID'][:8]}) runs other lstmbench code (version {theirs['version']}, "
                f"commit {(theirs['commit'] or 'unknown')[:12]}, digest {theirs['digest']}) than this driver "
                f"(version {mine['version']}, commit {(mine['commit'] or 'unknown')[:12]}, digest "
                f"{mine['digest']}): install the same commit there, or leave it out of the cluster")
        out.append(Node(n["NodeID"], name, labels.get(KIND_LABEL) or ident["machine"].get("slug", "?"),
                        float((n.get("Resources") or {}).get("CPU", 0)), ident["machine"]))
    return out


def choose_kinds(nodes: list[Node], on: str | None, device: str) -> dict[str, list[Node]]:
    """The kinds that take the work: `--on KIND` (comma list) or every kind; for --device gpu
    only kinds whose machines have a GPU. UsageError where none is left."""
    kinds: dict[str, list[Node]] = {}
    for n in nodes:
        kinds.setdefault(n.kind, []).append(n)
    if on:
        want = [k.strip() for k in on.split(",") if k.strip()]
        missing = [k for k in want if k not in kinds]
        if missing:
            raise ClusterError(f"--on {on}: the cluster has no node of kind {missing[0]!r}; its kinds are "
                               f"{', '.join(sorted(kinds))}")
        kinds = {k: kinds[k] for k in want}
    if device == "gpu":
        kinds = {k: ns for k, ns in kinds.items() if all(n.gpu for n in ns)}
        if not kinds:
            raise ClusterError("--device gpu: no kind of node in the cluster has a GPU; run on the CPU, "
                               "or add GPU nodes")
    return kinds


# ---- on a node -----------------------------------------------------------------------------------

def _here() -> dict[str, Any]:
    """Set a task's process up as a local run's would be, and say where it is."""
    import ray
    os.environ.pop("OMP_NUM_THREADS", None)  # Ray sets it (1 for a task with no CPU): the run sets its own
    from ..envs.interpreters import ROOT, _is_lstmbench_checkout
    if _is_lstmbench_checkout(ROOT):  # environments (.venv-chainer) are looked up from the checkout
        os.chdir(ROOT)
    ctx = ray.get_runtime_context()
    from ..envs.host import machine_info
    m = machine_info()
    labels = dict(ctx.get_node_labels())
    return {"node_id": ctx.get_node_id(), "node": labels.get(NAME_LABEL) or m.get("hostname"),
            "kind": labels.get(KIND_LABEL) or m.get("slug"), "machine": m, "pid": os.getpid(),
            "t": time.time()}


def workload_task(spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """One workload on this node (a streaming task): {"event": "started", ...where}, then
    {"event": "done", "record", "info", "start", "end", "blas", "flop", "best_s"}. The local
    engine measures it, from fresh workers; they are stopped whatever happens."""
    from ..engine.bench import Cell
    from ..engine.executor import LocalExecutor, Setup
    from ..envs.host import worker_cpus
    from ..engine.scheduler import Schedule
    from ..engine.signals import interruptible
    from ..envs.variants import parse_variants
    from ..engine.workers import Launcher
    where = _here()
    yield {"event": "started", **where}
    lines: list[str] = []
    variants = parse_variants(spec["variants"]) if spec["variants"] else []
    threads, device = spec["threads"], spec["device"]
    launch = Launcher(spec["overrides"], threads, spec["extra_env"],
                      worker_cpus(threads) if device == "cpu" else None,  # this node's CPUs
                      {v.name: v for v in variants}, {}, device)
    ex = LocalExecutor(Setup(spec["participants"], [v.name for v in variants], launch,
                             Schedule(**spec["sched"]), spec["seed"], device, spec["timeout"],
                             spec["round_time"]))
    try:
        with interruptible():  # a graceful ray.cancel arrives as SIGINT: stop, with `finally`
            info = ex.describe(lines.append)
            start = ex.machine("start", lines.append)
            rec = ex.run_workload(spec["wid"], [Cell.from_dict(c) for c in spec["cells"]],
                                  lines.append, lambda *a: None)
            end = ex.machine("end", lines.append)
    finally:
        ex.close()
    t_end = time.time()
    rec["workload"]["node"] = {k: where[k] for k in ("node", "node_id", "kind")}
    rec["workload"]["host"] = where["machine"].get("hostname")
    rec["workload"]["machine"] = {k: where["machine"].get(k)  # the node's own (a kind's may vary)
                                  for k in ("cpu", "cores", "memory_bytes", "gpu", "slug")}
    rec["workload"]["ran"] = [round(where["t"], 3), round(t_end, 3)]  # the node's clock, epoch s
    import sys
    yield {"event": "done", **where, "t_end": t_end, "record": rec, "info": info,
           "python": sys.version.split()[0], "cpus": launch.cpus,
           "start": start.probe, "start_gemm": start.gemm_gflops, "end": end.probe,
           "end_gemm": end.gemm_gflops, "blas": ex.blas, "flop": ex.probe.flop,
           "best_s": ex.probe.best_s, "lines": lines[-50:]}


def lane_task(fn: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """One lane's item on this node: `fn` ("package.module:function") called with kwargs; its
    result with where it ran (`node`)."""
    where = _here()
    mod, _, name = fn.partition(":")
    res = getattr(importlib.import_module(mod), name)(**kwargs)
    return {"result": res, "node": where["node"], "kind": where["kind"], "node_id": where["node_id"]}


# ---- the driver: workloads ---------------------------------------------------------------------

@dataclass
class Try:
    node: str | None
    outcome: str  # "ok", "lost: NodeDiedError", "lost: no news for 3600 s", "error: ..."
    seconds: float  # on the node (from its start), or waiting for one where it never started

    def to_json(self) -> dict[str, Any]:
        return {"node": self.node, "outcome": self.outcome, "seconds": round(self.seconds, 1)}


@dataclass
class Job:
    """A workload of a kind, as the driver follows it."""
    kind: str
    wid: str
    spec: dict[str, Any]
    tries: list[Try] = field(default_factory=list)


def live_kinds(ray: Any) -> dict[str, int]:
    """Live lstmbench nodes by kind (label, else the node is pinned by id: counted under "")."""
    out: dict[str, int] = {}
    for n in ray.nodes():
        if n.get("Alive") and NODE_RESOURCE in (n.get("Resources") or {}):
            k = (n.get("Labels") or {}).get(KIND_LABEL, "")
            out[k] = out.get(k, 0) + 1
    return out


def _selector(kind: str, nodes: list[Node]) -> dict[str, str]:
    """Ray's label selector for a kind: its label; a kind that is a machine slug (nodes without
    the label) as its nodes' ids."""
    if any(n.kind == kind and n.machine.get("slug") == kind for n in nodes) and \
            not any(n.kind == kind for n in nodes if n.machine.get("slug") != kind):
        return {"ray.io/node-id": f"in({','.join(n.id for n in nodes if n.kind == kind)})"}
    return {KIND_LABEL: kind}


def run_workloads(ray: Any, jobs: list[Job], nodes: list[Node], *, started: Callable[[Job, dict], None],
                  done: Callable[[Job, dict], None], failed: Callable[[Job], None], log: Log,
                  max_tries: int = MAX_TRIES, no_news_s: float = NO_NEWS_S) -> None:
    """Every job as one exclusive task on a node of its kind, `done` called as each finishes
    (its try recorded in job.tries); a try lost with its node, or silent for no_news_s, is
    recorded and submitted again to the kind while tries last and a node of it lives, else
    `failed`. KeyboardInterrupt cancels every outstanding task and propagates."""
    task = ray.remote(num_cpus=0, max_retries=0, num_returns="streaming")(workload_task)
    running: dict[Any, dict[str, Any]] = {}  # generator -> {"job", "where", "submitted", "news"}

    def kind_alive(kind: str) -> bool:
        sel = _selector(kind, nodes)
        if KIND_LABEL in sel:
            return bool(live_kinds(ray).get(kind))
        ids = set(sel["ray.io/node-id"][3:-1].split(","))
        return any(n.get("Alive") and n["NodeID"] in ids for n in ray.nodes())

    def submit(job: Job) -> None:
        gen = task.options(resources={NODE_RESOURCE: 1}, label_selector=_selector(job.kind, nodes),
                           name=f"lstmbench:{job.wid}").remote(job.spec)
        running[gen] = {"job": job, "where": None, "since": time.time(), "news": time.time()}

    def lost(gen: Any, why: str) -> None:
        st = running.pop(gen)
        job, where = st["job"], st["where"]
        job.tries.append(Try(where["node"] if where else None, why, time.time() - st["since"]))
        log(f"      {job.kind} {job.wid}: try {len(job.tries)}"
            + (f" on {where['node']}" if where else "") + f" {why}")
        if why.startswith("lost") and len(job.tries) < max_tries and kind_alive(job.kind):
            submit(job)
        else:
            failed(job)

    for job in jobs:
        if kind_alive(job.kind):
            submit(job)
        else:
            job.tries.append(Try(None, f"lost: no live node of kind {job.kind!r}", 0.0))
            failed(job)
    try:
        while running:
            ready, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
            for gen in ready:
                st = running[gen]
                try:
                    item = ray.get(next(gen))
                except StopIteration:
                    lost(gen, "error: the task ended without a result")
                    continue
                except (ray.exceptions.NodeDiedError, ray.exceptions.WorkerCrashedError,
                        ray.exceptions.ObjectLostError) as e:
                    lost(gen, f"lost: {type(e).__name__}")
                    continue
                except ray.exceptions.RayError as e:  # the workload's own failure: not retried
                    lost(gen, f"error: {_first_line(e)}")
                    continue
                st["news"] = time.time()
                if item["event"] == "started":
                    st["where"], st["since"] = item, time.time()
                    started(st["job"], item)
                else:
                    job = st["job"]
                    job.tries.append(Try(item["node"], "ok", time.time() - st["since"]))
                    running.pop(gen)
                    done(job, item)
            now = time.time()
            for gen, st in list(running.items()):
                # a frozen node: Ray tells only after minutes; ray.cancel returns at once, and
                # the abandoned try's late answer is never read
                if st["where"] and now - st["news"] > no_news_s:
                    ray.cancel(gen, force=True)
                    lost(gen, f"lost: no news for {no_news_s:.0f} s")
                elif st["where"] is None and not kind_alive(st["job"].kind):
                    ray.cancel(gen, force=True)
                    lost(gen, f"lost: no live node of kind {st['job'].kind!r}")
    except BaseException:
        cancel_all(ray, list(running))
        raise


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    # RayTaskError's text starts with its own header; the cause's line is the last
    return (text[-1] if text else type(e).__name__)[:300]


def cancel_all(ray: Any, refs: list[Any], grace_s: float = GRACE_S) -> None:
    """Graceful cancel (KeyboardInterrupt in each task: its `finally` stops its workers), then
    by force those still running after grace_s (PR_SET_PDEATHSIG takes their workers)."""
    for r in refs:
        try:
            ray.cancel(r)
        except Exception:  # noqa: BLE001 - already finished, or its node gone
            pass
    still = refs
    if refs:
        _, still = ray.wait(refs, num_returns=len(refs), timeout=grace_s)
    for r in still:
        try:
            ray.cancel(r, force=True)
        except Exception:  # noqa: BLE001
            pass


# ---- the driver: lanes (check, quality) --------------------------------------------------------

class RemoteTask:
    """A lane's task as harness.engine.lanes.Children holds it: stop(SIGTERM) cancels it
    gracefully, stop(SIGKILL) by force."""

    def __init__(self, ray: Any, ref: Any) -> None:
        self.ray, self.ref = ray, ref

    def stop(self, sig: int) -> None:
        try:
            self.ray.cancel(self.ref, force=sig == signal.SIGKILL)
        except Exception:  # noqa: BLE001 - finished meanwhile
            pass


class Lanes:
    """Lane items (a backend's check, its quality training) as packing tasks on the cluster's
    nodes of the chosen kinds: `call(fn, kwargs, children)` blocks its lane's thread until the
    item's result is back, submitting it again (MAX_TRIES) when its node is lost."""

    def __init__(self, ray: Any, nodes: list[Node], kinds: list[str], threads: int | None,
                 address: str = "") -> None:
        self.ray, self.threads, self.address = ray, max(1, threads or 1), address
        self.nodes = [n for n in nodes if n.kind in kinds]
        self.kinds = kinds
        most = max((n.cpus for n in self.nodes), default=0)
        if most < self.threads:  # Ray would keep such a task pending for ever
            raise ClusterError(f"--threads {self.threads}: no node of kind {', '.join(kinds)} has that many "
                               f"CPUs for Ray (the most is {most:g}); give --threads {max(1, int(most))}")
        self._task = ray.remote(max_retries=0)(lane_task)

    def record(self) -> dict[str, Any]:
        """What a results file keeps of where its items ran: {"cluster": ...}, and the machine
        where every node is of one kind."""
        out: dict[str, Any] = {"cluster": {"address": self.address, "kinds": self.kinds,
                                           "nodes": sorted(n.name for n in self.nodes)}}
        if len(self.kinds) == 1:
            out["machine"] = {**self.nodes[0].machine, "kind": self.kinds[0]}
        return out

    @property
    def jobs(self) -> int:
        """Items that fit side by side: each node's CPUs // threads, summed (at least 1)."""
        return max(1, sum(int(n.cpus // self.threads) for n in self.nodes))

    def call(self, fn: str, kwargs: dict[str, Any], children: Any, log: Log, what: str) -> dict[str, Any]:
        from ..engine.lanes import Stopped
        ray = self.ray
        for attempt in range(1, MAX_TRIES + 1):
            sel = {KIND_LABEL: f"in({','.join(self.kinds)})"} if all(
                n.kind != n.machine.get("slug") for n in self.nodes) else \
                {"ray.io/node-id": f"in({','.join(n.id for n in self.nodes)})"}
            ref = self._task.options(num_cpus=self.threads, resources={NODE_RESOURCE: PACK},
                                     label_selector=sel).remote(fn, kwargs)
            handle = RemoteTask(ray, ref)
            if not children.add(handle):
                raise Stopped
            try:
                while True:
                    ready, _ = ray.wait([ref], timeout=1.0)
                    if ready:
                        out = ray.get(ref)
                        return {**out["result"], "node": out["node"], "node_kind": out["kind"]}
                    if children.closed:
                        raise Stopped
            except ray.exceptions.TaskCancelledError:
                raise Stopped from None
            except (ray.exceptions.NodeDiedError, ray.exceptions.WorkerCrashedError) as e:
                log(f"{what}: try {attempt} lost its node ({type(e).__name__})"
                    + ("; submitting it again" if attempt < MAX_TRIES else ""))
                if attempt == MAX_TRIES:
                    raise
            finally:
                children.discard(handle)
        raise RuntimeError("unreachable")


def lanes_on(address: str, on: str | None, device: str, threads: int | None, log: Log,
             one_kind: str | None = None) -> Lanes:
    """`check --cluster` and a quality matrix's `--cluster`: join, ask the nodes who they are,
    choose the kinds; the Lanes their items go to. `one_kind` (what needs it): refuse a choice
    of several kinds, whose timings would mix in one file."""
    ray = connect(address)
    nodes = inventory(ray)
    kinds = choose_kinds(nodes, on, device)
    if one_kind and len(kinds) > 1:
        raise ClusterError(f"--cluster {address}: {one_kind} on one machine kind; the chosen nodes are of "
                           f"kinds {', '.join(kinds)}: pick one with --on KIND")
    lanes = Lanes(ray, nodes, list(kinds), threads, address)
    log(f"cluster {address}: "
        + "; ".join(f"{k}: {', '.join(n.name for n in ns)}" for k, ns in kinds.items())
        + f"; up to {lanes.jobs} items side by side")
    return lanes
