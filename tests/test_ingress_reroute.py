"""A request whose replica is gone before its first output goes to another replica; once an output has
reached the client, an error is the client's."""

import asyncio

import pytest
from ray.exceptions import ActorDiedError, ActorUnavailableError

from deployments.ingress import rerouted_before_first_output
from deployments.replica import ServedBy

OPENED = ServedBy("r", "fp16")


class Replicas:
    """Streams from a router that picks ``dead`` gone replicas first (``opens_then_drops``: they still send their
    ``ServedBy``, as a replica killed a moment before did); ``fail_after``: items before a live one fails."""

    def __init__(self, dead: int, items=(OPENED, "a", "b"), fail_after: int | None = None, opens_then_drops=False):
        self.dead, self.items, self.fail_after, self.starts = dead, items, fail_after, 0
        self.opens_then_drops = opens_then_drops

    async def _stream(self, gone: bool):
        if gone:
            if self.opens_then_drops:
                yield ServedBy("dead", "fp8")
            raise ActorUnavailableError("Actor is unavailable", None)
        for i, item in enumerate(self.items):
            if i == self.fail_after:
                raise ActorDiedError()
            yield item

    def start(self):
        self.starts += 1
        return self._stream(self.starts <= self.dead)


def collect(start, **kw):
    async def run():
        return [x async for x in rerouted_before_first_output(start, backoff_s=0, **kw)]

    return asyncio.run(run())


def test_a_stream_whose_replica_is_gone_before_its_first_output_is_sent_again():
    replicas = Replicas(dead=2)
    assert collect(replicas.start) == [OPENED, "a", "b"]
    assert replicas.starts == 3


def test_a_replica_that_opened_the_stream_and_then_dropped_it_is_forgotten_with_its_served_by():
    replicas = Replicas(dead=1, opens_then_drops=True)
    assert collect(replicas.start) == [OPENED, "a", "b"] and replicas.starts == 2


def test_a_healthy_stream_is_started_once():
    replicas = Replicas(dead=0)
    assert collect(replicas.start) == [OPENED, "a", "b"] and replicas.starts == 1


def test_after_the_last_reroute_the_replicas_error_reaches_the_caller():
    replicas = Replicas(dead=5)
    with pytest.raises(ActorUnavailableError):
        collect(replicas.start, reroutes=2)
    assert replicas.starts == 3


def test_an_error_after_the_first_item_is_not_retried():
    replicas = Replicas(dead=0, fail_after=2)
    got = []

    async def run():
        async for x in rerouted_before_first_output(replicas.start, backoff_s=0):
            got.append(x)

    with pytest.raises(ActorDiedError):
        asyncio.run(run())
    assert got == [OPENED, "a"] and replicas.starts == 1


def test_other_errors_are_not_retried():
    starts = []

    async def bad():
        starts.append(1)
        raise ValueError("bad request")
        yield  # an async generator

    with pytest.raises(ValueError):
        collect(bad)
    assert len(starts) == 1


def test_a_stream_that_ends_without_output_ends_without_a_retry():
    replicas = Replicas(dead=0, items=(OPENED,))
    assert collect(replicas.start) == [OPENED] and replicas.starts == 1
