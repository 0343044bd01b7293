"""Fakes shared by the accounts tests: a cheap counting Argon2 hasher, a
synchronous thread pool stand-in."""

from __future__ import annotations

import threading
from typing import Any, Callable, Literal

import argon2
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool


class CountingArgon(argon2.PasswordHasher):
    """Argon2id with parameters cheap enough for tests, counting its calls
    and noting the thread each ran in."""

    def __init__(self, time_cost: int = 1, memory_cost: int = 8, parallelism: int = 1) -> None:
        super().__init__(time_cost=time_cost, memory_cost=memory_cost, parallelism=parallelism, type=argon2.Type.ID)
        self.hashed = 0
        self.verified = 0
        self.threads: list[threading.Thread] = []
        self.seen: list[bytes | str] = []

    def hash(self, password: str | bytes, *, salt: bytes | None = None) -> str:
        self.hashed += 1
        self.threads.append(threading.current_thread())
        self.seen.append(password)
        return super().hash(password, salt=salt)

    def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
        self.verified += 1
        self.threads.append(threading.current_thread())
        self.seen.append(password)
        return super().verify(hash, password)

    @property
    def calls(self) -> int:
        return self.hashed + self.verified


class SyncPool(ThreadPool):
    """Runs each job at once in the calling thread (no threads at all)."""

    def __init__(self) -> None:
        super().__init__(minthreads=0, maxthreads=1, name="sync")
        self.jobs = 0

    def callInThreadWithCallback(self, onResult: Callable[[bool, Any], object] | None, func: Callable[..., Any], *args: Any, **kw: Any) -> None:
        self.jobs += 1
        try:
            result = func(*args, **kw)
        except BaseException:
            if onResult is not None:
                onResult(False, Failure())
            return
        if onResult is not None:
            onResult(True, result)


class SyncReactor:
    """The two reactor methods the password pool uses, synchronous."""

    def __init__(self, pool: ThreadPool | None = None) -> None:
        self.pool = pool if pool is not None else SyncPool()

    def callFromThread(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        f(*args, **kwargs)

    def getThreadPool(self) -> ThreadPool:
        return self.pool
