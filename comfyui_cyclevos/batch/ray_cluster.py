"""A batch on a Ray cluster (the optional extra ``ray``): one task per video; each worker process loads the
network on its first task and keeps it for the next ones; the workers write the outputs themselves (so
``--out`` must be a folder every node sees, e.g. a shared file system), the driver keeps the summary.
The resume and summary rules are those of ``local``. Ray is imported only here, and only when used."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable

from ..errors import InputError
from .jobs import Job
from .local import Engine, JobOptions, JobResult, Summary, attempt, failed, split_finished

_WORKER: dict = {"loads": 0}  # in a worker process: the batch's token and engine, and how many were loaded


def _import_ray():
    try:
        import ray
    except ImportError:
        raise InputError("--ray needs Ray: pip install 'comfyui-cyclevos[ray]' (or pip install ray)") from None
    return ray


def _run_on_worker(token: str, load_engine: Callable[[], Engine], job: Job, options: JobOptions) -> JobResult:
    """A Ray task: the engine of this batch (loaded once per worker process), then one video."""
    worker = f"{socket.gethostname()}:{os.getpid()}"
    if _WORKER.get("token") != token:
        _WORKER.pop("engine", None)  # another batch's network: free it first
        _WORKER.pop("token", None)
        _WORKER["loads"] += 1
        try:
            _WORKER["engine"] = load_engine()
        except Exception as e:  # e.g. the weights are not on this node: this video fails, the next tries again
            r = failed(job, e)
            r.worker, r.loads = worker, _WORKER["loads"]
            return r
        _WORKER["token"] = token
    r = attempt(_WORKER["engine"], job, options)
    r.worker, r.loads = worker, _WORKER["loads"]
    return r


def run_batch_ray(
    jobs: list[Job],
    load_engine: Callable[[], Engine],
    *,
    options: JobOptions | None = None,
    summary: Summary,
    address: str | None = None,
    cpus: float = 1.0,
    gpus: float = 0.0,
    on_result: Callable[[JobResult], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> Summary:
    """Run ``jobs`` as Ray tasks of ``cpus`` CPUs and ``gpus`` GPUs each. Connects to the cluster at
    ``address`` (None: ``RAY_ADDRESS``, else a running local cluster, else a new one on this machine); when
    Ray is already initialised in this process, that cluster is used and left running. ``load_engine``
    runs on the workers: it must be picklable (a module-level function or a partial of one). ``log`` gets
    a last line: how many workers ran the videos and how many times they loaded the network."""
    options = options or JobOptions()
    todo = split_finished(jobs, summary, on_result)
    if not todo:
        return summary
    ray = _import_ray()
    started = not ray.is_initialized()
    if started:
        try:
            ray.init(address=address or None, log_to_driver=False)
        except ConnectionError as e:
            raise InputError(f"cannot reach the Ray cluster at {address or 'RAY_ADDRESS'} ({e})") from None
    try:
        task = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=0)(_run_on_worker)
        token = uuid.uuid4().hex
        pending = {task.remote(token, load_engine, job, options): (i, job) for i, job in todo}
        loads: dict[str, set[int]] = {}  # worker -> its process's load count at each of its videos
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                i, job = pending.pop(ref)
                try:
                    r = ray.get(ref)
                except Exception as e:  # the worker died (out of memory, killed): that video failed
                    r = failed(job, f"the Ray worker failed: {str(e).strip().splitlines()[0] if str(e) else e!r}")
                if r.worker:
                    loads.setdefault(r.worker, set()).add(r.loads)
                summary.add(i, r)
                if on_result is not None:
                    on_result(r)
        if log is not None:
            loaded = sum(max(n) - min(n) + 1 for n in loads.values())
            log(f"ray: {len(todo)} video(s) on {len(loads)} worker(s); the network was loaded {loaded} time(s)")
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(ref)
        raise
    finally:
        if started:
            ray.shutdown()
    return summary
