"""featx.storage: atomic files, locks that name their holder, stage folders published by rename."""

import os
import subprocess
import sys
import textwrap

import pytest

from featx.storage import BusyError, atomic_write_text, locked, stage_folder


def test_atomic_write_keeps_old_file_on_error(tmp_path):
    target = tmp_path / "a.txt"
    atomic_write_text(target, "old")

    def boom(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")

    from featx.storage import atomic_write
    with pytest.raises(RuntimeError):
        atomic_write(target, boom)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_stage_folder_publishes_and_keeps_later_stages(tmp_path):
    target = tmp_path / "exp"
    with stage_folder(target) as tmp:
        (tmp / "results.csv").write_text("v1")
    (target / "finetune").mkdir()
    (target / "finetune" / "state.json").write_text("later stage")
    with stage_folder(target, keep=("finetune",)) as tmp:
        (tmp / "results.csv").write_text("v2")
    assert (target / "results.csv").read_text() == "v2"
    assert (target / "finetune" / "state.json").read_text() == "later stage"


def test_stage_folder_error_leaves_old_folder_and_kept_entries(tmp_path):
    target = tmp_path / "exp"
    with stage_folder(target) as tmp:
        (tmp / "results.csv").write_text("v1")
    (target / "finetune").mkdir()
    (target / "finetune" / "w").write_text("weights")
    with pytest.raises(KeyboardInterrupt):
        with stage_folder(target, keep=("finetune",)) as tmp:
            (tmp / "results.csv").write_text("v2")
            raise KeyboardInterrupt
    assert (target / "results.csv").read_text() == "v1"
    assert (target / "finetune" / "w").read_text() == "weights"
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("exp.lock")) == ["exp"]


def test_second_writer_gets_busy_error_naming_holder(tmp_path):
    target = tmp_path / "exp"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from featx.storage import locked
        with locked({str(target)!r}):
            print("held", flush=True)
            time.sleep(30)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(BusyError, match=rf"pid {holder.pid} on "):
            with locked(target):
                pass
    finally:
        holder.kill()
        holder.wait()
    with locked(target):  # released by the holder's death
        pass
