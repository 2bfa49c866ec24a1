"""JSON-lines files survive a kill or a full disk mid-append: torn tails are cut off, bad lines skipped."""

import errno
import io
import json
import os
import warnings

import pytest

from agents.base import Budget
from netcomp import jsonl
from netcomp.data import load_dataset
from netcomp.evaluator import EvalResult, Evaluator, load_fidelity
from netcomp.jsonl import CorruptLineWarning, TornLineWarning, append_jsonl, read_jsonl
from netcomp.surgery import set_widths
from netcomp.teachers import get_teacher
from runner.recorder import RunLog, read_records
from tests.conftest import TINY

ROWS = [{"index": 0, "reward": 0.5, "action": [1, 0, 1]}, {"index": 1, "reward": None, "note": "ünïcode"}]


def _line(row: dict) -> bytes:
    return (json.dumps(row) + "\n").encode()


def _torn(row: dict) -> bytes:
    """Half of ``row``'s line, as a kill in the middle of its append leaves it (no newline)."""
    line = _line(row)
    return line[: len(line) // 2]


def _every_line_parses(path) -> list[dict]:
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"", "the file must end with a newline"
    return [json.loads(line) for line in lines[:-1]]


@pytest.fixture
def no_jsonl_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error", jsonl.JsonlWarning)
        yield


def test_append_and_read_round_trip(tmp_path, no_jsonl_warnings):
    path = tmp_path / "deep" / "er" / "log.jsonl"       # parent folders are created
    assert read_jsonl(path) == []                         # a missing file reads as []
    for row in ROWS:
        append_jsonl(path, row)
    assert read_jsonl(path) == ROWS
    assert path.read_bytes() == b"".join(_line(r) for r in ROWS)
    path.write_bytes(b"\n" + _line(ROWS[0]) + b"\n  \n" + _line(ROWS[1]) + b"\n")  # empty lines are ignored
    assert read_jsonl(path) == ROWS


def test_torn_tail_is_dropped_and_cut_off_so_the_next_append_is_clean(tmp_path):
    path = tmp_path / "log.jsonl"
    good = _line(ROWS[0])
    path.write_bytes(good + _torn(ROWS[1]))
    with pytest.warns(TornLineWarning, match=rf"log\.jsonl.*{len(_torn(ROWS[1]))} bytes"):
        assert read_jsonl(path) == [ROWS[0]]
    assert path.read_bytes() == good                      # truncated to the last complete line
    new = {"index": 2, "reward": 1.0}
    append_jsonl(path, new)
    assert _every_line_parses(path) == [ROWS[0], new]
    assert read_jsonl(path) == [ROWS[0], new]


def test_torn_tail_with_a_newline_but_invalid_json_is_repaired(tmp_path):
    path = tmp_path / "log.jsonl"
    good = _line(ROWS[0]) + _line(ROWS[1])
    path.write_bytes(good + b'{"index": 2, "rew\n')
    with pytest.warns(TornLineWarning):
        assert read_jsonl(path) == ROWS
    assert path.read_bytes() == good
    path.write_bytes(good + b"\x00" * 40)                  # a NUL-filled tail (crash with delayed allocation)
    with pytest.warns(TornLineWarning, match="40 bytes"):
        assert read_jsonl(path) == ROWS
    assert path.read_bytes() == good


def test_without_repair_a_torn_tail_is_dropped_but_the_file_left_alone(tmp_path):
    path = tmp_path / "log.jsonl"
    data = _line(ROWS[0]) + _torn(ROWS[1])
    path.write_bytes(data)
    with pytest.warns(TornLineWarning, match="left as is"):
        assert read_jsonl(path, repair=False) == [ROWS[0]]
    assert path.read_bytes() == data


def test_a_corrupt_middle_line_is_skipped_and_later_lines_still_read(tmp_path):
    path = tmp_path / "log.jsonl"
    data = _line(ROWS[0]) + b'{"index": 1, "oops\n' + b"[1, 2]\n" + _line(ROWS[1])
    path.write_bytes(data)
    with pytest.warns(CorruptLineWarning) as record:
        assert read_jsonl(path) == ROWS
    lines = [str(w.message) for w in record if issubclass(w.category, CorruptLineWarning)]
    assert len(lines) == 2 and "log.jsonl: line 2 " in lines[0]
    assert "log.jsonl: line 3 " in lines[1]               # a JSON value that is not an object is bad too
    assert not any(issubclass(w.category, TornLineWarning) for w in record)
    assert path.read_bytes() == data                      # the middle of a file is never rewritten


def test_append_after_an_unrepaired_torn_line_starts_a_line_of_its_own(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_bytes(_line(ROWS[0]) + _torn(ROWS[1]))
    new = {"index": 2}
    append_jsonl(path, new)
    with pytest.warns(CorruptLineWarning, match="line 2 "):
        assert read_jsonl(path) == [ROWS[0], new]


class _HalfWriteFile(io.FileIO):
    """A real file whose write() writes half the bytes, then fails like a full disk."""

    written: list[int] = []

    def write(self, data):
        data = bytes(data)
        self.written.append(super().write(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_write_that_fails_part_way_leaves_the_file_as_it_was(tmp_path, monkeypatch):
    path = tmp_path / "log.jsonl"
    append_jsonl(path, ROWS[0])
    before = path.read_bytes()
    monkeypatch.setattr(jsonl, "open", lambda file, mode, **_: _HalfWriteFile(file, mode.replace("b", "")),
                        raising=False)
    with pytest.raises(OSError, match="No space left"):
        append_jsonl(path, ROWS[1])
    assert _HalfWriteFile.written[-1] > 0                 # half a line did reach the file ...
    assert path.read_bytes() == before                    # ... and was cut off again
    monkeypatch.undo()
    append_jsonl(path, ROWS[1])                            # the disk has room again
    assert _every_line_parses(path) == ROWS


def test_a_failing_fsync_leaves_the_file_as_it_was(tmp_path, monkeypatch):
    path = tmp_path / "log.jsonl"
    append_jsonl(path, ROWS[0])
    before = path.read_bytes()

    def fsync(fd):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OSError, match="I/O error"):
        append_jsonl(path, ROWS[1])
    assert path.read_bytes() == before


def test_read_records_repairs_a_torn_evaluations_file_and_runlog_appends_cleanly(tmp_path):
    path = tmp_path / "run" / "evaluations.jsonl"
    path.parent.mkdir()
    path.write_bytes(_line(ROWS[0]) + _line(ROWS[1]) + _torn({"index": 2, "reward": 0.25}))
    with pytest.warns(TornLineWarning, match="evaluations.jsonl"):
        records = read_records(path)
    assert records == ROWS
    assert path.read_bytes() == _line(ROWS[0]) + _line(ROWS[1])
    log = RunLog(Budget(10), path, records=list(records), skip_until=len(records))
    record = {"index": 2, "reward": 0.75}
    log.add(record)
    assert log.records == [*ROWS, record]
    assert _every_line_parses(path) == [*ROWS, record]
    assert read_records(path) == [*ROWS, record]


@pytest.fixture(scope="module")
def setup():
    data = load_dataset("synthetic", **TINY)
    teacher = get_teacher("resnet20", data, recipe="smoke", progress=False)
    return data, teacher


def test_evaluator_loads_a_cache_with_a_torn_last_line_and_stores_cleanly_after(setup, tmp_path):
    data, teacher = setup
    fidelity = load_fidelity("smoke")
    path = tmp_path / "cache.jsonl"
    keys = Evaluator(teacher, data, fidelity)
    a = set_widths(teacher.arch, {"conv1": 8})
    b = set_widths(teacher.arch, {"layer3.0.conv1": 20})
    ka, kb = keys.cache_key(a, "reinit", 0), keys.cache_key(b, "reinit", 0)
    ra = EvalResult(True, "a", 100, 1000, accuracy=0.5, eval_seconds=1.5)
    rb = EvalResult(True, "b", 200, 2000, accuracy=0.25, loss=1.0)
    good = _line({"cache_key": ka, "result": ra.to_json()}) + _line({"cache_key": kb, "result": rb.to_json()})
    path.write_bytes(good + _torn({"cache_key": "c", "result": ra.to_json()}))

    with pytest.warns(TornLineWarning, match="cache.jsonl"):
        ev = Evaluator(teacher, data, fidelity, cache_path=path)
    assert ev.cache == {ka: ra, kb: rb}
    assert path.read_bytes() == good
    result = ev.evaluate(a)
    assert result.cached and result.accuracy == 0.5 and ev.trainings == 0   # resumed: nothing retrained

    rc = EvalResult(False, "c", 300, 3000, invalid_reason="too big")
    ev._store("c", rc)
    rows = _every_line_parses(path)
    assert [r["cache_key"] for r in rows] == [ka, kb, "c"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", jsonl.JsonlWarning)
        again = Evaluator(teacher, data, fidelity, cache_path=path)
    assert again.cache == {ka: ra, kb: rb, "c": rc}
