"""Where per-checkpoint jobs run: in this process (``local``) or as Ray tasks (``ray``).

A stage (indicators, finetune, zoo build) cuts its work into :class:`Job` s, one per
(checkpoint, spec): a module-level function and picklable arguments that compute and
*return* a result (no store writes), plus the :class:`Resources` the spec asks for. The
stage hands the jobs to an executor and writes each result to the store as it comes back,
on the driver::

    with make_executor("ray", address="auto") as ex:
        for job, result in ex.run(jobs):
            store.put_...(result)          # only the driver writes: SQLite has one writer

- :class:`LocalExecutor` calls the functions one after another in this process, in order,
  and raises a job's error at once. It never imports ray.
- :class:`RayExecutor` submits every job as a Ray task with ``num_cpus``/``num_gpus`` from the
  spec, ``max_calls=1`` (a fresh worker process per job, so a job's GPU memory is freed when
  it ends; ``max_calls=0`` reuses workers and saves their imports, for CPU-only jobs) and
  ``max_retries`` (a job whose worker dies — killed, OOM, node lost — is run again on
  another worker; an exception raised by the job itself is not retried). Results are
  yielded as jobs finish; after a failed job the others still finish and are yielded, then
  the first error is raised. ``address`` is passed to ``ray.init``: ``None`` starts a local
  Ray on this machine (or joins the one ``RAY_ADDRESS`` names), ``"auto"`` joins the cluster
  started with ``ray start`` on this node, ``"ray://HOST:10001"`` connects a Ray Client.
  Workers need ckptsel installed and the checkpoint, data and workspace paths visible at
  the same place (a shared filesystem).

Resources come from the spec or task YAML keys ``num_cpus`` (default 1) and ``num_gpus``
(default 0; fractions share a GPU between jobs), read by :func:`resources_from`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

from ckptsel.errors import CkptselError

EXECUTORS = ("local", "ray")
RESOURCE_KEYS = {"num_cpus", "num_gpus"}
DEFAULT_MAX_RETRIES = 3


@dataclass(frozen=True)
class Resources:
    """What one job asks the scheduler for (Ray's ``num_cpus``, ``num_gpus``)."""

    num_cpus: float = 1
    num_gpus: float = 0


def resources_from(data: dict, where: str) -> Resources:
    """``Resources`` from the ``num_cpus``/``num_gpus`` keys of a YAML mapping (defaults 1, 0)."""
    values = {}
    for key, default in (("num_cpus", 1), ("num_gpus", 0)):
        v = data.get(key, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise CkptselError(f"{where}: {key} must be a number >= 0, not {v!r}")
        values[key] = v
    if values["num_gpus"] > 1 and values["num_gpus"] != int(values["num_gpus"]):
        raise CkptselError(f"{where}: num_gpus above 1 must be a whole number, not {values['num_gpus']}")
    return Resources(**values)


@dataclass(frozen=True)
class Job:
    """``fn(*args, **kwargs)`` for one (checkpoint, spec); ``key`` names it in logs and errors."""

    key: str
    fn: Callable[..., Any]
    args: tuple
    resources: Resources = Resources()
    kwargs: dict = field(default_factory=dict)


class LocalExecutor:
    """Runs jobs in this process, in order (the default; behaves like a plain loop)."""

    name = "local"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def run(self, jobs: Iterable[Job]) -> Iterator[tuple[Job, Any]]:
        for job in jobs:
            yield job, job.fn(*job.args, **job.kwargs)


def _call(fn, args, kwargs):
    return fn(*args, **kwargs)


class RayExecutor:
    """Runs each job as a Ray task (see the module docstring); a context manager that starts
    or joins Ray on enter and shuts it down on exit only if it started it (entering it again
    inside its own ``with`` is harmless)."""

    name = "ray"

    def __init__(self, address: str | None = None, *, max_retries: int = DEFAULT_MAX_RETRIES, max_calls: int = 1,
                 init_kwargs: dict | None = None):
        self.address, self.max_retries, self.max_calls = address, max_retries, max_calls
        self.init_kwargs = init_kwargs or {}
        self._owns_ray, self._depth = False, 0

    def __enter__(self):
        ray = _import_ray()
        if not ray.is_initialized():
            try:
                ray.init(address=self.address, include_dashboard=False, log_to_driver=False,
                         **self.init_kwargs)
            except (ConnectionError, RuntimeError, ValueError) as e:
                where = self.address or "a new local Ray instance"
                raise CkptselError(f"could not start or join Ray at {where} ({str(e).splitlines()[0]}); "
                                   "check --ray-address (e.g. auto, or ray://HEAD:10001) and that "
                                   "`ray status` works there") from e
            self._owns_ray = True
        self._depth += 1
        return self

    def __exit__(self, *exc):
        self._depth -= 1
        if self._owns_ray and self._depth == 0:
            _import_ray().shutdown()
            self._owns_ray = False
        return False

    def run(self, jobs: Iterable[Job]) -> Iterator[tuple[Job, Any]]:
        ray = _import_ray()
        from ray.exceptions import RayError, RayTaskError

        remote = ray.remote(max_calls=self.max_calls)(_call)  # 1: a fresh worker process per job
        pending = {}
        for job in jobs:
            r = job.resources
            opts = remote.options(num_cpus=r.num_cpus, num_gpus=r.num_gpus, max_retries=self.max_retries,
                                  retry_exceptions=False, name=f"ckptsel:{job.key}")
            pending[opts.remote(job.fn, job.args, job.kwargs)] = job
        errors: list[str] = []
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    job = pending.pop(ref)
                    try:
                        result = ray.get(ref)
                    except RayTaskError as e:  # the job raised: not retried, reported as it was raised
                        cause = e.cause
                        errors.append(str(cause) if isinstance(cause, CkptselError)
                                      else f"job {job.key} failed: {type(cause).__name__}: {cause}")
                        continue
                    except RayError as e:  # the worker died more than max_retries times, or the task was lost
                        errors.append(f"job {job.key}: its Ray worker died {self.max_retries + 1} time(s) "
                                      f"({type(e).__name__}); see the Ray logs, give the job more memory "
                                      "(num_cpus/num_gpus in the spec) or rerun: finished jobs are kept")
                        continue
                    yield job, result
        finally:
            for ref in pending:  # the consumer stopped early (error or interrupt): free the cluster
                ray.cancel(ref, force=True)
        if errors:
            more = f" (and {len(errors) - 1} other job(s) failed)" if len(errors) > 1 else ""
            raise CkptselError(errors[0] + more)


def _import_ray():
    try:
        import ray
    except ImportError as e:
        raise CkptselError("--executor ray needs Ray; install it with `pip install 'ckptsel[ray]'` "
                           "(or `pip install 'ray>=2.9'`)") from e
    return ray


def make_executor(name: str = "local", address: str | None = None, *,
                  max_retries: int = DEFAULT_MAX_RETRIES) -> LocalExecutor | RayExecutor:
    """The executor called ``name`` (``local`` or ``ray``); ``address`` only for ``ray``."""
    if name == "local":
        if address:
            raise CkptselError("--ray-address is only used with --executor ray; add --executor ray or drop it")
        return LocalExecutor()
    if name == "ray":
        return RayExecutor(address, max_retries=max_retries)
    raise CkptselError(f"unknown executor {name!r}; use one of {', '.join(EXECUTORS)}")
