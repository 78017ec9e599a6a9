"""The state file: a corrupt or unreadable one is renamed aside, reported (log and a
STATE_FILE_CORRUPT event) and never fatal; writes are fsynced before the rename, and
the directory after it."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from sidecar.core.clock import FakeClock
from sidecar.events import Event, EventKind
from sidecar.registry import Registry

WALL = 1_767_225_600.0  # 2026-01-01T00:00:00Z
STAMP = "20260101T000000Z"


def registry_at(path: Path) -> tuple[Registry, list[Event]]:
    registry = Registry(FakeClock(WALL), state_file=str(path))
    events: list[Event] = []
    registry.bus.subscribe(events.append)
    return registry, events


@pytest.mark.parametrize("content", ["{not json", "", "[]", "null", '{"version": 1}',
                                     '{"endpoints": 5}', "\x00\xff garbage"])
def test_corrupt_state_file_is_renamed_aside_and_reported(
        tmp_path: Path, content: str, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "state.json"
    path.write_text(content, encoding="latin-1")
    registry, events = registry_at(path)
    with caplog.at_level(logging.ERROR, logger="sidecar.registry"):
        assert registry.load_state() == 0
    aside = tmp_path / f"state.json.corrupt-{STAMP}"
    assert not path.exists()
    assert aside.read_bytes() == content.encode("latin-1")  # kept for inspection
    [event] = events
    assert event.kind is EventKind.STATE_FILE_CORRUPT
    assert (event.source, event.moved_to) == (str(path), str(aside))
    assert event.reason
    assert "state file unreadable, moved aside" in caplog.text
    # The registry works and writes a fresh state file.
    registry.register("web", "http://h:9")
    assert [e["id"] for e in json.loads(path.read_text())["endpoints"]] == ["h:9"]


def test_unreadable_state_file_is_renamed_aside(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.mkdir()  # exists, but cannot be read as a file (even by root)
    registry, events = registry_at(path)
    assert registry.load_state() == 0
    assert (tmp_path / f"state.json.corrupt-{STAMP}").is_dir()
    assert [e.kind for e in events] == [EventKind.STATE_FILE_CORRUPT]


def test_a_second_corrupt_file_in_the_same_second_gets_its_own_name(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    for content in ("{one", "{two"):
        path.write_text(content)
        assert registry_at(path)[0].load_state() == 0
    assert (tmp_path / f"state.json.corrupt-{STAMP}").read_text() == "{one"
    assert (tmp_path / f"state.json.corrupt-{STAMP}-2").read_text() == "{two"


def test_a_failed_rename_is_reported_and_not_fatal(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "state.json"
    path.write_text("{bad")

    def refuse(*args: Any) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "rename", refuse)
    registry, events = registry_at(path)
    assert registry.load_state() == 0
    [event] = events
    assert event.moved_to == "" and event.source == str(path)


def test_a_valid_file_with_bad_entries_is_not_moved(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text(json.dumps({"version": 1, "endpoints": [
        {"cluster": "web", "url": "http://h:1", "id": "a"}, {"cluster": ""}]}))
    registry, events = registry_at(path)
    assert registry.load_state() == 1
    assert path.exists() and not list(tmp_path.glob("*.corrupt-*"))
    assert EventKind.STATE_FILE_CORRUPT not in {e.kind for e in events}


def test_save_fsyncs_the_file_before_the_rename_and_the_directory_after(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "state.json"
    calls: list[tuple[str, Any]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        is_dir = os.path.isdir(os.readlink(f"/proc/self/fd/{fd}"))
        calls.append(("fsync", "dir" if is_dir else "file"))
        real_fsync(fd)

    def replace(src: Any, dst: Any) -> None:
        calls.append(("replace", os.fspath(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    registry = Registry(FakeClock(WALL), state_file=str(path))
    registry.register("web", "http://h:9")
    assert calls == [("fsync", "file"), ("replace", str(path)), ("fsync", "dir")]
    assert json.loads(path.read_text())["endpoints"][0]["id"] == "h:9"


def test_a_failed_save_leaves_no_temporary_file(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "state.json"

    def refuse(*args: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    registry = Registry(FakeClock(WALL), state_file=str(path))
    registry.register("web", "http://h:9")  # not fatal
    assert sorted(p.name for p in tmp_path.iterdir()) == []
