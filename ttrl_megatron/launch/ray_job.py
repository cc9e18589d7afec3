"""Run the per-rank worker program (``ttrl_megatron.main.run``, the one torchrun runs) as Ray actors.

``run_job(cfg, opts)``: connect to a Ray cluster (``opts.address`` / ``RAY_ADDRESS``) or start a local one, reserve
``trainer.nnodes x trainer.n_gpus_per_node`` slots in a placement group (one GPU each, or one CPU on a CPU-only
run; ``PACK``ed so a node's slots stay together), start one actor per slot, give each the torch.distributed
environment torchrun would (RANK / WORLD_SIZE / LOCAL_RANK, MASTER_ADDR:MASTER_PORT = a TCPStore that rank 0's actor
starts on a port the OS picks, which every rank joins as a client, like torchrun's agent store),
run the worker program in every actor, and supervise: per-step progress from rank 0's ``metrics.jsonl``, the first
failing rank's traceback, and on any failure or Ctrl-C every actor is killed, the placement group removed and a local
cluster shut down (no orphaned processes). Returns the process exit code (as ``ttrl_megatron.main``'s: 0, 1, 2 for bad
config/data with its one line, 75 preempted, 130 interrupted).

Preemption: SIGUSR1 or SIGTERM to this driver (``ray_slurm.sbatch`` forwards Slurm's notice) is passed as SIGUSR1 to
rank 0's actor process by a one-off Ray task on its node; the ranks then agree, checkpoint after the current step and
return 75, exactly as under torchrun (trainer/preemption.py). A second SIGTERM, or Ctrl-C, stops everything at once.

Imports ray lazily (optional dependency); never imports torch/megatron/vllm in the driver.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

PREEMPTED = 75  # trainer/preemption.py EXIT_PREEMPTED (not imported: the driver never imports torch)
PROGRESS_KEYS = ("critic/score/mean", "train/label_accuracy", "actor/pg_loss", "actor/grad_norm", "timing_s/step")
REPO_ROOT = str(Path(__file__).resolve().parents[2])


@dataclasses.dataclass
class RayOptions:
    """Launcher settings (command-line flags of ``ray_main``; not part of the training config)."""

    address: str | None = None  # Ray cluster address; None: $RAY_ADDRESS, else a new local cluster
    grader: str = "ray"  # "ray": grade with Ray tasks over the cluster; "local": rank 0's process pool
    dashboard: bool = False  # start Ray's dashboard (local cluster only), bound to 127.0.0.1
    log_to_driver: bool = True  # stream worker stdout/stderr to this terminal
    extra_cpus: int = 0  # local cluster: CPUs beyond the training slots (grading tasks); 0 = ttrl.grader_workers


# ------------------------------------------------------------------------------------------------ the actor
class RankWorker:
    """One training rank. Made a Ray actor by ``run_job`` (``ray.remote``), so this module imports without ray."""

    def node_info(self) -> dict:
        import ray

        # the driver may forward a preemption signal before run() has installed the trainer's handler: keep it
        signal.signal(signal.SIGUSR1, _remember_signal)

        ctx = ray.get_runtime_context()
        return {"ip": ray.util.get_node_ip_address(), "node": ctx.get_node_id(),
                "gpus": [int(g) for g in ray.get_gpu_ids()], "pid": os.getpid()}

    def host_store(self) -> int:
        """Rank 0: start the job's TCPStore on a port the OS picks, held by this actor until it ends; returns the
        port. Every rank then joins it as a client (TORCHELASTIC_USE_AGENT_STORE, as under torchrun's agent): a
        port probed free and bound later could be taken in between (EADDRINUSE on a busy node)."""
        import datetime

        import torch.distributed as dist

        self._store = dist.TCPStore("0.0.0.0", 0, is_master=True, wait_for_workers=False,
                                    timeout=datetime.timedelta(seconds=300))
        return self._store.port

    def run(self, cfg, env: dict, progress=None) -> dict:
        """Set the torchrun environment and run the worker program; rank 0 also forwards metrics rows.
        Returns {"status": 0 | 2 | 75, "message": the one-line error of a bad config/data (status 2)}."""
        os.environ.update(env)
        from ttrl_megatron.main import configure_logging, run_worker

        configure_logging(force=True)
        if progress is not None:
            _tail_metrics(Path(cfg.trainer.run_dir) / "metrics.jsonl", progress)
        try:
            status, message = run_worker(cfg, early_signal=_EARLY_SIGNALS[0] if _EARLY_SIGNALS else None)
        except BaseException:
            # Carry the rank's own formatted traceback in the message: depending on where the rank fails, Ray's
            # wrapper may hold only str(exc), and the driver must show where the failure happened.
            raise RuntimeError(f"rank {env.get('RANK')} failed:\n{traceback.format_exc()}") from None
        return {"status": status, "message": message}


_EARLY_SIGNALS: list[str] = []  # preemption signals this actor process got before the worker program started


def _remember_signal(signum, frame) -> None:
    _EARLY_SIGNALS.append(signal.Signals(signum).name)


def _tail_metrics(path: Path, queue) -> None:
    """Daemon thread: every metrics row appended to ``path`` after now -> ``queue`` (a ray.util.queue.Queue)."""
    start = path.stat().st_size if path.is_file() else 0

    def loop() -> None:
        offset, buf = start, ""
        while True:
            time.sleep(0.5)
            if not path.is_file():
                continue
            with open(path) as f:
                f.seek(offset)
                buf += f.read()
                offset = f.tell()
            *lines, buf = buf.split("\n")
            for line in lines:
                if line.strip():
                    queue.put(json.loads(line))

    threading.Thread(target=loop, name="ttrl-metrics-tail", daemon=True).start()


# ------------------------------------------------------------------------------------------------ the driver
def _init_ray(opts: RayOptions, world: int, use_gpu: bool, extra_cpus: int) -> None:
    import ray

    address = opts.address or os.environ.get("RAY_ADDRESS") or None
    kwargs = dict(log_to_driver=opts.log_to_driver, include_dashboard=opts.dashboard)
    if opts.dashboard:
        kwargs["dashboard_host"] = "127.0.0.1"  # never expose it beyond this machine by default
    if address is None:  # our own local cluster: enough logical CPUs for the slots and the grading tasks
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, os.environ.get("PYTHONPATH")) if p)
        cpus = world * (0 if use_gpu else 1) + extra_cpus
        kwargs["num_cpus"] = max(os.cpu_count() or 1, cpus)
        try:
            ray.init(address="local", **kwargs)
        except Exception as exc:  # Ray gives its raylet a fixed 30 s to register: an overloaded host may miss it
            if "timed out during startup" not in str(exc):
                raise
            print(f"[ray_main] local Ray instance did not start ({exc}); trying once more", file=sys.stderr)
            ray.shutdown()
            ray.init(address="local", **kwargs)
    else:
        kwargs.pop("include_dashboard"), kwargs.pop("dashboard_host", None)  # the cluster owns its dashboard
        ray.init(address=address, **kwargs)


def _rank_envs(infos: list[dict], use_gpu: bool) -> list[dict]:
    """Per bundle: the torch.distributed env (MASTER_PORT is added once rank 0 hosts the store). Ranks go node by
    node (nodes in order of their first bundle)."""
    node_order = list(dict.fromkeys(info["node"] for info in infos))
    order = sorted(range(len(infos)), key=lambda b: (node_order.index(infos[b]["node"]), b))
    master = infos[order[0]]
    envs: list[dict] = [{}] * len(infos)
    seen: dict[str, int] = {}
    for rank, b in enumerate(order):
        local = seen.get(infos[b]["node"], 0)
        seen[infos[b]["node"]] = local + 1
        envs[b] = {"RANK": str(rank), "WORLD_SIZE": str(len(infos)), "MASTER_ADDR": master["ip"],
                   "TORCHELASTIC_USE_AGENT_STORE": "True",  # every rank is a client of the store rank 0's actor holds
                   # on GPU every actor sees all of its node's GPUs (NOSET below); its own is the one Ray assigned
                   "LOCAL_RANK": str(infos[b]["gpus"][0] if use_gpu else local),
                   "LOCAL_WORLD_SIZE": str(sum(i["node"] == infos[b]["node"] for i in infos)),
                   "NODE_RANK": str(node_order.index(infos[b]["node"]))}
    return envs


def run_job(cfg, opts: RayOptions, out=sys.stdout) -> int:
    """Train under Ray; returns 0, 1 (a rank failed) or 130 (interrupted)."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.queue import Queue
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    tr = cfg.trainer
    world, use_gpu = tr.nnodes * tr.n_gpus_per_node, tr.device != "cpu"
    extra = opts.extra_cpus or (cfg.ttrl.grader_workers if opts.grader == "ray" else 0)
    _init_ray(opts, world, use_gpu, extra)
    actors, pg, failed = [], None, None
    stop = _StopRequest()
    previous = {s: signal.signal(s, stop.on_signal) for s in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        bundle = {"GPU": 1, "CPU": 1} if use_gpu else {"CPU": 1}
        pg = placement_group([dict(bundle) for _ in range(world)], strategy="PACK")
        _wait_placement(pg, world, bundle)
        env_vars = {"RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES": "1"} if use_gpu else {}
        worker = ray.remote(RankWorker)
        actors = [worker.options(num_cpus=1, num_gpus=1 if use_gpu else 0, max_restarts=0,
                                 runtime_env={"env_vars": env_vars} if env_vars else None,
                                 scheduling_strategy=PlacementGroupSchedulingStrategy(
                                     pg, placement_group_bundle_index=b)).remote() for b in range(world)]
        infos = ray.get([a.node_info.remote() for a in actors])
        envs = _rank_envs(infos, use_gpu)
        rank0 = next(b for b, e in enumerate(envs) if e["RANK"] == "0")
        stop.rank0 = infos[rank0]
        port = ray.get(actors[rank0].host_store.remote())
        for e in envs:
            e["MASTER_PORT"] = str(port)
        grader_env = {"TTRL_GRADER": opts.grader}
        progress = Queue(actor_options={"num_cpus": 0})
        refs = {a.run.remote(cfg, {**e, **grader_env}, progress if e["RANK"] == "0" else None): int(e["RANK"])
                for a, e in zip(actors, envs)}
        print(f"[ray_main] {world} ranks on {len(set(e['NODE_RANK'] for e in envs))} node(s), master "
              f"{envs[0]['MASTER_ADDR']}:{envs[0]['MASTER_PORT']}, grader={opts.grader}", file=out, flush=True)
        failed = _supervise(refs, progress, tr.total_training_steps, out, stop)
    except KeyboardInterrupt:
        print("[ray_main] interrupted: stopping every rank", file=sys.stderr, flush=True)
        failed = 130
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for actor in actors:
            ray.kill(actor, no_restart=True)
        if pg is not None:
            remove_placement_group(pg)
        ray.shutdown()
    return failed or 0


class _StopRequest:
    """The driver's preemption state: the first SIGUSR1/SIGTERM asks rank 0 to stop after its step (sent from the
    supervising loop, not from the handler); a second SIGTERM stops everything now (KeyboardInterrupt)."""

    def __init__(self):
        self.signum: int | None = None
        self.sent = False
        self.rank0: dict | None = None  # node_info() of rank 0's actor

    def on_signal(self, signum, frame):
        if self.signum is not None and signum == signal.SIGTERM:
            raise KeyboardInterrupt
        if self.signum is None:
            self.signum = signum
            os.write(2, f"[ray_main] {signal.Signals(signum).name}: every rank checkpoints after its current step "
                        f"(SIGTERM again or Ctrl-C stops now)\n".encode())

    def forward(self) -> None:
        """Send SIGUSR1 to rank 0's process, from a task on its node (the driver may run elsewhere)."""
        if self.signum is None or self.sent or self.rank0 is None:
            return
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        self.sent = True
        ray.get(_remote_signal().options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(
            node_id=self.rank0["node"], soft=False)).remote(self.rank0["pid"], int(signal.SIGUSR1)))


def _signal_process_fn(pid: int, signum: int) -> None:
    os.kill(pid, signum)


_signal_process = None


def _remote_signal():
    global _signal_process
    if _signal_process is None:
        import ray

        _signal_process = ray.remote(_signal_process_fn)
    return _signal_process


def _wait_placement(pg, world: int, bundle: dict) -> None:
    import ray

    ready, _ = ray.wait([pg.ready()], timeout=float(os.environ.get("TTRL_RAY_PLACEMENT_TIMEOUT_S", "120")))
    if not ready:
        raise RuntimeError(f"Ray could not reserve {world} slots of {bundle} (trainer.nnodes x "
                           f"trainer.n_gpus_per_node) within the timeout; cluster has {ray.cluster_resources()}")


def _supervise(refs: dict, progress, total_steps: int, out, stop: _StopRequest | None = None) -> int:
    """Wait for every rank; print each step's key metrics as rank 0 logs it. Returns 0, 1 at the first failed rank,
    2 at the first rank stopped by bad config/data (its one line), or 75 when the ranks stopped for preemption."""
    import ray

    pending, rows, statuses = list(refs), [], []
    while pending:
        done, pending = ray.wait(pending, num_returns=1, timeout=0.5)
        rows += _drain(progress, total_steps, out)
        if stop is not None:
            stop.forward()
        for ref in done:
            try:
                result = ray.get(ref)
            except Exception as exc:  # RayTaskError carries the rank's traceback; RayActorError a dead process
                detail = getattr(exc, "traceback_str", None) or str(exc)  # the rank's own traceback when Ray has it
                print(f"[ray_main] rank {refs[ref]} failed; stopping every rank.\n{detail}", file=sys.stderr,
                      flush=True)
                return 1
            if result["status"] == 2:
                print(f"[ray_main] rank {refs[ref]}: {result['message']}", file=sys.stderr, flush=True)
                return 2
            statuses.append(result["status"])
    time.sleep(0.6)  # the tail thread's last poll
    rows += _drain(progress, total_steps, out)
    train = [r for r in rows if r.get("step", 0) > 0]
    if train:
        print("[ray_main] final step " + json.dumps({k: train[-1][k] for k in sorted(train[-1])}), file=out,
              flush=True)
    if any(code == PREEMPTED for code in statuses):
        print(f"[ray_main] preempted: every rank checkpointed and stopped; exit {PREEMPTED} (run the same command "
              f"again to resume)", file=out, flush=True)
        return PREEMPTED
    return 0


def _drain(progress, total_steps: int, out) -> list[dict]:
    rows = []
    while not progress.empty():
        row = progress.get()
        rows.append(row)
        shown = " ".join(f"{k}={row[k]:.4g}" for k in PROGRESS_KEYS if isinstance(row.get(k), (int, float)))
        print(f"[ray_main] step {row.get('step')}/{total_steps} {shown}", file=out, flush=True)
    return rows
