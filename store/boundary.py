"""The store's edge: Redis failures become `Retryable`, Redis replies become typed text."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import ParamSpec, TypeVar

from redis.exceptions import RedisError

from core.errors import StoreUnavailable

P = ParamSpec("P")
T = TypeVar("T")


def translated(method: Callable[P, T]) -> Callable[P, T]:
    """Turn a Redis failure into `Retryable`, so callers retry rather than lose work."""

    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return method(*args, **kwargs)
        except RedisError as exc:
            raise StoreUnavailable(
                f"results store unavailable: {type(exc).__name__}: {exc}"
            ) from exc

    wrapper.__name__ = method.__name__
    wrapper.__doc__ = method.__doc__
    return wrapper


def translated_iterator(method: Callable[P, Iterator[T]]) -> Callable[P, Iterator[T]]:
    """`translated` for a generator: a Redis failure while it is being read becomes `Retryable`."""

    def wrapper(*args: P.args, **kwargs: P.kwargs) -> Iterator[T]:
        try:
            yield from method(*args, **kwargs)
        except RedisError as exc:
            raise StoreUnavailable(
                f"results store unavailable: {type(exc).__name__}: {exc}"
            ) from exc

    wrapper.__name__ = method.__name__
    wrapper.__doc__ = method.__doc__
    return wrapper


def text(value: object) -> str:
    """A reply of a client made with decode_responses=True, typed as the str it is."""
    return value if isinstance(value, str) else str(value)


def optional_text(value: object) -> str | None:
    return None if value is None else text(value)
