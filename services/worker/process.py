"""Per-process worker state: settings, database, storage, the loaded models and small caches.

One instance per task process, created after fork (worker_process_init) so no database connection,
CUDA context or model is shared across a fork. Models stay loaded for the life of the process.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cachetools import LRUCache
from sqlalchemy.orm import Session, sessionmaker

from services.common.db import dispose, make_session_factory
from services.common.storage import Storage, make_storage
from services.worker.settings import WorkerSettings

if TYPE_CHECKING:
    from diffii_core.models import LoadedModel

log = logging.getLogger("diffii.worker")


class JobCache(LRUCache[Any, Any]):
    """Per-job artifacts (dataset, concepts, pools) reused by the next shard of the same job."""

    def __init__(self, maxsize: int, on_evict: Callable[[Any, Any], None] | None = None) -> None:
        super().__init__(maxsize)
        self.on_evict = on_evict

    def popitem(self) -> tuple[Any, Any]:
        # LRUCache evicts through popitem, for get_or's stores and direct ones alike.
        key, value = super().popitem()
        if self.on_evict is not None:
            self.on_evict(key, value)
        return key, value

    def get_or(self, key: Any, make: Callable[[], Any]) -> Any:
        if key in self:
            return self[key]
        value = make()
        self[key] = value
        return value


class WorkerProcess:
    def __init__(self, settings: WorkerSettings | None = None) -> None:
        self.settings = settings or WorkerSettings()
        self.settings.ensure_home()
        self.sessions: sessionmaker[Session] = make_session_factory(self.settings)
        self.storage: Storage = make_storage(self.settings)
        instance = f"@{self.settings.worker_instance}" if self.settings.worker_instance else ""
        self.name = f"{socket.gethostname()}:{os.getpid()}{instance}"
        assert self.settings.work_dir is not None
        self.work_dir = Path(self.settings.work_dir) / f"p{os.getpid()}"
        self._models: dict[str, LoadedModel] = {}
        self._model_lock = threading.Lock()
        self.datasets = JobCache(2, lambda key, value: shutil.rmtree(self.job_dir(key), ignore_errors=True))
        self.concepts = JobCache(2)
        self.pools = JobCache(4)

    def job_dir(self, job_id: str) -> Path:
        path = self.work_dir / job_id
        path.mkdir(parents=True, exist_ok=True)
        return path

    def model(self, name: str) -> LoadedModel:
        """The named model from the operator's list, loaded on first use and kept."""
        with self._model_lock:
            if name not in self._models:
                from diffii_core.models import load_model

                cache = str(self.settings.model_cache_dir) if self.settings.model_cache_dir else None
                log.info("loading model", extra={"model": name})
                self._models[name] = load_model(name, self.settings.models, cache_dir=cache)
            return self._models[name]

    def preload(self) -> None:
        for name in self.settings.models_to_preload():
            try:
                self.model(name)
            except Exception:  # a broken model must not stop the worker; its jobs fail with the error
                log.exception("could not preload model", extra={"model": name})

    def close(self) -> None:
        shutil.rmtree(self.work_dir, ignore_errors=True)
        dispose(self.sessions)


_current: WorkerProcess | None = None
_current_lock = threading.Lock()


def current() -> WorkerProcess:
    global _current
    with _current_lock:
        if _current is None or _current_pid != os.getpid():
            _set(WorkerProcess())
        assert _current is not None
        return _current


_current_pid = -1


def _set(process: WorkerProcess | None) -> None:
    global _current, _current_pid
    _current = process
    _current_pid = os.getpid()


def init_process(settings: WorkerSettings | None = None, preload: bool = True) -> WorkerProcess:
    """Called once in each task process after fork."""
    with _current_lock:
        _set(WorkerProcess(settings))
    assert _current is not None
    if preload:
        _current.preload()
    return _current
