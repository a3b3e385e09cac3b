"""``SyncClient``: the asyncio client for scripts, run on its own event loop in a thread.

Every method blocks until its answer arrives (or ``timeout`` seconds pass). Subscription
callbacks run on the client's thread, not the caller's: keep them short and hand work
over with a queue. ``SyncSubscription.rows`` copies the cache on the client's thread, so
it is a consistent snapshot at one offset.

    with SyncClient("ws://127.0.0.1:8765/v1/ws") as vh:
        sub = vh.subscribe("SELECT * FROM segment WHERE call_id = $1", ["c1"])
        vh.call("say", {"call_id": "c1", "text": "hello"})
        print(sub.rows)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from voicehub.client.cache import Subscription
from voicehub.client.connection import Client
from voicehub.client.wire import CallOutcome, QueryRows

T = TypeVar("T")


class SyncSubscription:
    """A blocking view of a ``Subscription``."""

    def __init__(self, owner: SyncClient, sub: Subscription) -> None:
        self._owner = owner
        self.subscription = sub

    @property
    def query_id(self) -> Any:
        return self.subscription.query_id

    @property
    def columns(self) -> list[str]:
        return list(self.subscription.columns)

    @property
    def key(self) -> tuple[str, ...] | None:
        return self.subscription.key

    @property
    def rows(self) -> list[Any]:
        return self._owner._on_loop(lambda: self.subscription.rows)

    @property
    def offset(self) -> int:
        return self._owner._on_loop(lambda: self.subscription.offset)

    def get(self, *key: Any) -> Any:
        return self._owner._on_loop(lambda: self.subscription.get(*key))

    def __len__(self) -> int:
        return self._owner._on_loop(lambda: len(self.subscription))

    def on_insert(self, cb: Callable[[Any], object]) -> Callable[[Any], object]:
        """``cb(row)`` on the client's thread."""
        return self.subscription.on_insert(cb)

    def on_delete(self, cb: Callable[[Any], object]) -> Callable[[Any], object]:
        return self.subscription.on_delete(cb)

    def on_update(self, cb: Callable[[Any, Any], object]) -> Callable[[Any, Any], object]:
        return self.subscription.on_update(cb)

    def wait_for(self, predicate: Callable[[Subscription], bool], timeout: float = 10.0) -> None:
        """Block until ``predicate(subscription)`` holds (evaluated on the client's thread)."""
        self._owner._run(self.subscription.wait_for(predicate, timeout), timeout + 1)

    def unsubscribe(self) -> None:
        self._owner._run(self.subscription.unsubscribe())


class SyncClient:
    """``Client`` with blocking methods; accepts the same keyword options."""

    def __init__(self, url: str, *, timeout: float = 30.0, **options: Any) -> None:
        self.timeout = timeout
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="voicehub-sync-client", daemon=True
        )
        self._thread.start()
        try:
            self.client: Client = self._run(Client.connect(url, **options))
        except BaseException:
            self._stop_loop()
            raise

    # ---------------------------------------------------------------- plumbing

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("a SyncClient cannot block inside its own callbacks")
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return fut.result(self.timeout if timeout is None else timeout)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise TimeoutError("the voicehub client did not answer in time") from None

    def _on_loop(self, fn: Callable[[], T]) -> T:
        if threading.current_thread() is self._thread:
            return fn()  # already on the client's thread (inside a callback)
        done: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                done.set_result(fn())
            except BaseException as e:
                done.set_exception(e)

        self._loop.call_soon_threadsafe(run)
        return done.result(self.timeout)

    def _stop_loop(self) -> None:
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._loop.is_running():
            self._loop.close()

    # ---------------------------------------------------------------- API

    @property
    def session_token(self) -> str | None:
        return self.client.session_token

    @property
    def identity(self) -> str | None:
        return self.client.identity

    @property
    def last_offset(self) -> int:
        return self.client.last_offset

    def call(
        self,
        reducer: str,
        args: Any = None,
        *,
        request_id: str | int | None = None,
        timeout: float | None = None,
    ) -> Any:
        return self.call_outcome(reducer, args, request_id=request_id, timeout=timeout).value

    def call_outcome(
        self,
        reducer: str,
        args: Any = None,
        *,
        request_id: str | int | None = None,
        timeout: float | None = None,
    ) -> CallOutcome:
        return self._run(self.client.call_outcome(reducer, args, request_id=request_id), timeout)

    def query(self, sql: str, params: Any = None, *, timeout: float | None = None) -> QueryRows:
        return self._run(self.client.query(sql, params), timeout)

    def subscribe(self, sql: str, params: Any = None, **options: Any) -> SyncSubscription:
        """Like ``Client.subscribe`` (callbacks given here run on the client's thread)."""
        timeout = options.pop("timeout", None)
        sub = self._run(self.client.subscribe(sql, params, **options), timeout)
        return SyncSubscription(self, sub)

    def close(self) -> None:
        if self._loop.is_closed():
            return
        try:
            self._run(self.client.close(), 10)
        finally:
            self._stop_loop()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
