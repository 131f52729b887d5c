"""The device IO every driver shares (drivers.base.LinkedDeviceIO, LinkPool): writes are
counted alike, an exception a driver failed to map is still a refusal (WriteError) rather
than a crash, unwritable points are named alike, links are reference counted."""

from __future__ import annotations

import pytest

from drivers.base import DeviceOffline, IOStats, LinkedDeviceIO, LinkPool, UnknownPoint, WriteError
from gateway.model import PointValue


class _Device(LinkedDeviceIO):
    """A unit-test double: ``_write`` does what the test says."""

    def __init__(self, error: Exception | None = None) -> None:
        self.device_id = "dev1"
        self.endpoint = "test://link"
        self.stats = IOStats()
        self.error = error
        self.points = {"p_set_kw": "rw", "p_kw": "r"}

    async def read(self) -> dict[str, PointValue | None]:
        return {}

    async def _write(self, point: str, value: PointValue) -> PointValue | None:
        self.writable_point(self.points, ["p_set_kw"], point)
        if self.error is not None:
            raise self.error
        return value


async def test_writes_are_counted_and_a_success_clears_the_last_error() -> None:
    dev = _Device(error=WriteError("dev1: refused"))
    with pytest.raises(WriteError, match="refused"):
        await dev.write("p_set_kw", 1.0)
    assert (dev.stats.writes, dev.stats.errors, dev.stats.last_error) == (1, 1, "dev1: refused")
    dev.error = None
    assert await dev.write("p_set_kw", 2.0) == 2.0
    assert (dev.stats.writes, dev.stats.errors, dev.stats.last_error) == (2, 1, None)


async def test_an_unmapped_library_error_is_a_counted_refusal() -> None:
    dev = _Device(error=KeyError("signal"))
    with pytest.raises(WriteError) as err:
        await dev.write("p_set_kw", 1.0)
    assert str(err.value) == "dev1: writing 'p_set_kw' failed in the driver: KeyError: 'signal'"
    assert dev.stats.errors == 1 and dev.stats.last_error == "KeyError: 'signal'"


async def test_unwritable_points_and_detached_devices_are_named() -> None:
    dev = _Device()
    with pytest.raises(UnknownPoint, match=r"^dev1: 'p_kw' is read-only \(writable: p_set_kw\)$"):
        await dev.write("p_kw", 1.0)
    with pytest.raises(UnknownPoint, match=r"^dev1: 'x' is not in the template \(writable: "):
        await dev.write("x", 1.0)
    dev._attached = False
    with pytest.raises(DeviceOffline, match=r"^dev1: detached from test://link$"):
        await dev.write("p_set_kw", 1.0)
    assert dev.stats.errors == 3


def test_a_link_is_shared_and_handed_back_with_its_last_device() -> None:
    pool: LinkPool[list[str]] = LinkPool()
    made: list[list[str]] = []

    def make() -> list[str]:
        made.append([])
        return made[-1]

    a = pool.attach("tcp://h:1", make)
    assert pool.attach("tcp://h:1", make) is a and len(made) == 1 and pool.refs("tcp://h:1") == 2
    assert pool.detach("tcp://h:1") is None  # one device still on it
    assert pool.detach("tcp://h:1") is a and pool.links == {}
    assert pool.detach("tcp://h:1") is None  # a second close is harmless
