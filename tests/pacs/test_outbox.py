"""Outbox: idempotent spooling, exponential back-off, per-destination progress, recovery of an interrupted move."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from mmclinic.config import PacsDestination
from mmclinic.pacs.outbox import Outbox, dest_key
from mmclinic.pacs.testing import dest, make_settings


def _outbox(tmp_path: Path, results: dict[int, list[bool]], calls: list[int]) -> Outbox:
    settings = make_settings(tmp_path, destinations=[dest(1), dest(2)], retry_initial_s=5.0, retry_max_s=20.0)

    def sender(data: bytes, d: PacsDestination, calling: str) -> tuple[bool, str]:
        calls.append(d.port)
        ok = results[d.port].pop(0)
        return ok, "ok" if ok else "pacs.destination_unreachable"

    return Outbox(tmp_path / "outbox", settings.pacs, sender)


def test_backoff_and_each_destination_served_once(tmp_path: Path) -> None:
    calls: list[int] = []
    box = _outbox(tmp_path, {1: [True], 2: [False, False, False, True]}, calls)
    assert box.put("sr-1", b"DICM") is True
    assert box.put("sr-1", b"DICM") is False  # idempotent
    assert box.flush(now=100.0).failed == 1
    st = box.state("sr-1")
    assert st["remaining"] == [dest_key(dest(2))] and st["next_at"] == 105.0
    assert box.flush(now=104.0).waiting == 1
    box.flush(now=105.0)
    assert box.state("sr-1")["next_at"] == 115.0  # 5 s, 10 s, ...
    box.flush(now=115.0)
    assert box.state("sr-1")["next_at"] == 135.0  # capped at retry_max_s
    assert box.flush(now=135.0).sent == 1
    assert calls == [1, 2, 2, 2, 2]  # destination 1 only once
    assert box.sent() == ["sr-1"] and box.pending() == [] and box.get("sr-1") == b"DICM"
    assert box.put("sr-1", b"DICM") is False  # already delivered: not spooled again


def test_interrupted_move_is_completed(tmp_path: Path) -> None:
    box = _outbox(tmp_path, {1: [True], 2: [True]}, [])
    box.put("sr-2", b"DICM")
    box.sent_dir.mkdir(parents=True)
    os.replace(box.pending_dir / "sr-2.dcm", box.sent_dir / "sr-2.dcm")  # crash between the two renames
    box.flush(now=0.0)
    assert box.sent() == ["sr-2"] and box.pending() == []


def _reconfigurable(tmp_path: Path, calls: list[int]) -> Callable[..., Outbox]:
    """``box(*ports)``: the same spool under a configuration with those destinations; every send succeeds."""

    def sender(data: bytes, d: PacsDestination, calling: str) -> tuple[bool, str]:
        calls.append(d.port)
        return True, "ok"

    def box(*ports: int) -> Outbox:
        return Outbox(tmp_path / "outbox", make_settings(tmp_path, destinations=[dest(p) for p in ports]).pacs, sender)

    return box


def test_a_destination_added_later_gets_the_result_once(tmp_path: Path) -> None:
    calls: list[int] = []
    box = _reconfigurable(tmp_path, calls)
    assert box(1).put("sr-1", b"DICM") and box(1).flush(now=1.0).sent == 1
    assert box(1).put("sr-1", b"DICM") is False  # nothing new to send
    later = box(1, 2)
    assert later.put("sr-1", b"OTHER BYTES") is True  # destination 2 was added: re-opened for it alone
    assert later.pending() == ["sr-1"] and later.state("sr-1")["remaining"] == [dest_key(dest(2))]
    assert later.flush(now=2.0).sent == 1 and later.get("sr-1") == b"DICM"  # the spooled bytes, not new ones
    assert later.put("sr-1", b"DICM") is False
    assert calls == [1, 2]


def test_a_destination_removed_before_delivery_is_dropped_not_counted_as_delivered(tmp_path: Path) -> None:
    calls: list[int] = []
    box = _reconfigurable(tmp_path, calls)
    assert box(1, 2).put("sr-1", b"DICM")
    assert box(1).flush(now=1.0).sent == 1 and calls == [1]  # 2 was taken out of the configuration meanwhile
    assert box(1, 2).put("sr-1", b"DICM") is True  # back in: it still gets the result
    assert box(1, 2).flush(now=2.0).sent == 1 and calls == [1, 2]
