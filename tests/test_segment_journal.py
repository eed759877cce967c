"""Long clips' work folders that cannot be hurt: a damaged or foreign journal, two runs on one output, a run
killed after its join, defaults named after a kill, and what a continued run says. Segments are 1 s here,
so a 3 s clip of 32x32 frames makes three of them in a blink."""

import errno
import json
import os
import signal
import subprocess
import sys

import av
import pytest

from conftest import run_cli, write_clip
from vidcycle.apply import journal, segments
from vidcycle.apply.jobs import ApplyOptions, translate_video
from vidcycle.apply.journal import JOURNAL, LOCK, Journal, work_folder
from vidcycle.errors import OutputExistsError

FPS, SECONDS = 8, 3
COMMON = ["--device", "cpu", "--precision", "fp32", "--engine", "torch"]


@pytest.fixture(autouse=True)
def one_second_segments(monkeypatch):
    monkeypatch.setattr(segments, "SEGMENT_SECONDS", 1)


@pytest.fixture
def clip(tmp_path):
    return write_clip(tmp_path / "a.mp4", frames=FPS * SECONDS, size=(32, 32), fps=FPS, audio=True)


@pytest.fixture
def alone(tmp_path, clip, tiny_model_file):
    """The output of the clip made by one uninterrupted run."""
    out = tmp_path / "alone.mp4"
    result = run_cli(*args(clip, tiny_model_file, out))
    assert result.exit_code == 0, result.output
    return out.read_bytes()


def args(src, model, dst, *extra):
    return ["apply", src, "-m", model, "-o", dst, *COMMON, *extra]


def interrupted(monkeypatch, src, model, dst, *extra, after: int | None = None):
    """A run stopped as a kill would stop it: after `after` segments, or (None) with every segment written,
    before the join."""
    if after is None:
        monkeypatch.setattr("vidcycle.apply.jobs.join", lambda clip: (_ for _ in ()).throw(KeyboardInterrupt))
    else:
        record = Journal.record

        def stop_after(journal, line):
            if len(journal.done) == after:
                raise KeyboardInterrupt
            record(journal, line)
        monkeypatch.setattr(Journal, "record", stop_after)
    result = run_cli(*args(src, model, dst, *extra))
    assert result.exit_code == 130 and (work_folder(dst) / JOURNAL).exists(), result.output
    monkeypatch.undo()
    monkeypatch.setattr(segments, "SEGMENT_SECONDS", 1)


def journal_lines(dst):
    return (work_folder(dst) / JOURNAL).read_text().splitlines()


def write_journal(dst, lines):
    (work_folder(dst) / JOURNAL).write_text("".join(line + "\n" for line in lines))


def no_traceback(result):
    """Our errors are one line each; a traceback (or an exception CliRunner caught) is a bug."""
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)


def damage(lines, how):
    """The journal's lines with one foreign or damaged line put in."""
    if how == "hashes-empty":  # segment 1's record, its hashes gone: segment 1 is not done
        record = json.loads(lines[2]) | {"hashes": {}}
        return [lines[0], lines[1], json.dumps(record), *lines[3:]]
    if how == "cut":  # a line cut short by a kill, then a record appended after it
        return [lines[0], lines[1][:30], *lines[2:]]
    foreign = {"empty-object": "{}", "list": "[1, 2]", "number": "3",
               "wrong-file": json.dumps(json.loads(lines[1]) | {"file": "../a.mp4"}),
               "frames-text": json.dumps(json.loads(lines[1]) | {"frames": "8"})}[how]
    return [lines[0], foreign, *lines[1:]]


@pytest.mark.parametrize("how", ["empty-object", "list", "hashes-empty", "number", "wrong-file", "frames-text",
                                 "cut"])
def test_a_foreign_or_damaged_journal_line_is_a_segment_not_done(tmp_path, monkeypatch, clip, tiny_model_file,
                                                                 alone, how):
    out = tmp_path / "out.mp4"
    interrupted(monkeypatch, clip, tiny_model_file, out)
    write_journal(out, damage(journal_lines(out), how))
    again = run_cli(*args(clip, tiny_model_file, out))
    no_traceback(again)
    assert again.exit_code == 0, again.output
    assert out.read_bytes() == alone and not work_folder(out).exists()


@pytest.mark.parametrize("first", ["[1, 2]", "{}", "not json", '{"format": "vidcycle-apply-journal", "version": "1"}'])
def test_a_journal_that_is_not_ours_is_refused_in_one_line_and_overwrite_recovers(tmp_path, monkeypatch, clip,
                                                                                  tiny_model_file, alone, first):
    out = tmp_path / "out.mp4"
    interrupted(monkeypatch, clip, tiny_model_file, out)
    write_journal(out, [first, *journal_lines(out)[1:]])
    refused = run_cli(*args(clip, tiny_model_file, out))
    no_traceback(refused)
    named = [line for line in refused.stderr.splitlines() if "unfinished run" in line]
    assert refused.exit_code == 8 and len(named) == 1, refused.output
    assert ("journal" in named[0] and "pass --overwrite" in named[0]) and not out.exists()
    assert "overwrite=True" not in refused.stderr  # the command line's words, not the API's
    afresh = run_cli(*args(clip, tiny_model_file, out, "--overwrite"))
    assert afresh.exit_code == 0, afresh.output
    assert out.read_bytes() == alone and not work_folder(out).exists()


@pytest.mark.parametrize("mess", ["binary-journal", "journal-is-a-folder", "folder-is-a-file", "lock-is-a-link"])
def test_overwrite_removes_the_work_folder_whatever_it_holds(tmp_path, clip, tiny_model_file, alone, mess):
    out = tmp_path / "out.mp4"
    folder = work_folder(out)
    if mess == "folder-is-a-file":
        folder.write_bytes(b"not a folder")
    else:
        folder.mkdir()
        if mess == "binary-journal":
            (folder / JOURNAL).write_bytes(b"\xff\xfe\x00garbage")
        elif mess == "lock-is-a-link":  # vidcycle must not write its pid through it
            (folder / LOCK).symlink_to(tmp_path / "precious.txt")
            (tmp_path / "precious.txt").write_text("keep me")
        else:
            (folder / JOURNAL).mkdir()
        (folder / "00000.mp4").write_bytes(b"junk")
    refused = run_cli(*args(clip, tiny_model_file, out))
    no_traceback(refused)
    # a journal that is not ours is an output in the way (8); a folder vidcycle cannot use, a failed input (9)
    expected = 8 if mess in ("binary-journal", "journal-is-a-folder") else 9
    assert refused.exit_code == expected and len(refused.stderr.strip().splitlines()) >= 1, refused.output
    afresh = run_cli(*args(clip, tiny_model_file, out, "--overwrite"))
    assert afresh.exit_code == 0, afresh.output
    assert out.read_bytes() == alone and not folder.exists()
    if mess == "lock-is-a-link":
        assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_a_folder_job_goes_on_past_a_clip_whose_journal_is_damaged(tmp_path, clip, tiny_model_file):
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    for name in ("a.mp4", "b.mp4"):
        (inputs / name).write_bytes(clip.read_bytes())
    work_folder(outputs / "a.mp4").mkdir(parents=True)
    (work_folder(outputs / "a.mp4") / JOURNAL).write_text("[1, 2]\n")
    job = run_cli("apply", inputs, "-m", tiny_model_file, "-o", outputs, *COMMON)
    no_traceback(job)
    assert job.exit_code == 8, job.output  # the one failure is an output in the way (8), not a bad input (9)
    assert (outputs / "b.mp4").exists() and not (outputs / "a.mp4").exists()
    assert job.stdout.split() == [str(outputs / "b.mp4")]
    assert [line for line in job.stderr.splitlines() if "a.mp4" in line and "journal" in line]
    again = run_cli("apply", inputs, "-m", tiny_model_file, "-o", outputs, *COMMON, "--overwrite")
    assert again.exit_code == 0 and (outputs / "a.mp4").exists(), again.output


HOLD_LOCK = """
import fcntl, os, sys, time
descriptor = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o666)
fcntl.flock(descriptor, fcntl.LOCK_EX)
os.ftruncate(descriptor, 0)  # the pid of the run that held it before may be longer
os.pwrite(descriptor, str(os.getpid()).encode(), 0)
print("held", flush=True)
time.sleep(120)
"""


def test_a_second_run_on_the_same_output_is_refused_with_the_first_ones_pid(tmp_path, monkeypatch, clip,
                                                                            tiny_model_file, alone):
    out = tmp_path / "out.mp4"
    interrupted(monkeypatch, clip, tiny_model_file, out, after=1)
    first = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(work_folder(out) / LOCK)], stdout=subprocess.PIPE)
    try:
        assert first.stdout.readline() == b"held\n"  # stands for a run that is writing the output
        second = run_cli(*args(clip, tiny_model_file, out))
        no_traceback(second)
        named = [line for line in second.stderr.splitlines() if "another vidcycle" in line]
        assert second.exit_code == 8 and len(named) == 1, second.output
        assert f"(pid {first.pid})" in named[0] and str(out) in named[0]
        assert len(journal_lines(out)) == 2 and not out.exists()  # nothing of the first run's was touched
        with pytest.raises(OutputExistsError, match=f"pid {first.pid}"):
            translate_video(clip, out, tiny_model_file, ApplyOptions(engine="torch"), device="cpu",
                            precision="fp32")
    finally:
        first.send_signal(signal.SIGKILL)  # a killed holder leaves no stale lock
        first.wait()
    after = run_cli(*args(clip, tiny_model_file, out))
    assert after.exit_code == 0, after.output
    assert out.read_bytes() == alone and not work_folder(out).exists()


def leftover(out, journal: str | None):
    """The work folder a run killed while removing it after its join leaves beside its complete output."""
    folder = work_folder(out)
    folder.mkdir()
    (folder / "00002.mp4").write_bytes(b"segment bytes")
    if journal == "joined":
        (folder / JOURNAL).write_text('{"format": "vidcycle-apply-journal", "version": 1}\n{"joined": true}\n')


@pytest.mark.parametrize("mode, code", [([], "refused"), (["--skip-existing"], 0), (["--overwrite"], 0)],
                         ids=["exists", "skip-existing", "overwrite"])
@pytest.mark.parametrize("journal", [None, "joined"], ids=["journal-gone", "journal-joined"])
def test_a_work_folder_left_beside_a_complete_output_goes_on_the_next_run(tmp_path, clip, tiny_model_file, mode,
                                                                          code, journal):
    out = tmp_path / "out.mp4"
    assert run_cli(*args(clip, tiny_model_file, out)).exit_code == 0
    made = out.read_bytes()
    leftover(out, journal)
    again = run_cli(*args(clip, tiny_model_file, out, *mode))
    assert again.exit_code != 0 if code == "refused" else again.exit_code == code, again.output
    assert not work_folder(out).exists() and out.exists()
    if mode != ["--overwrite"]:
        assert out.read_bytes() == made


def test_an_unfinished_overwrite_or_a_held_folder_beside_an_output_is_kept(tmp_path, monkeypatch, clip,
                                                                           tiny_model_file):
    out = tmp_path / "out.mp4"
    assert run_cli(*args(clip, tiny_model_file, out)).exit_code == 0
    interrupted(monkeypatch, clip, tiny_model_file, out, "--overwrite", after=1)  # a killed --overwrite run
    assert run_cli(*args(clip, tiny_model_file, out, "--skip-existing")).exit_code == 0
    assert len(journal_lines(out)) == 2  # its segment waits for the run that continues it
    write_journal(out, [*journal_lines(out), '{"joined": true}'])
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(work_folder(out) / LOCK)], stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == b"held\n"
        assert run_cli(*args(clip, tiny_model_file, out, "--skip-existing")).exit_code == 0
        assert work_folder(out).exists()  # another vidcycle holds it
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()


@pytest.mark.parametrize("then, now", [
    ([], ["--codec", "libx264"]),
    ([], ["--crf", "17", "--preset", "fast", "--chroma", "420"]),
    (["--codec", "libx264", "--crf", "17"], []),
], ids=["codec-named-after", "crf-preset-chroma-named-after", "named-before"])
def test_naming_the_defaults_is_the_same_job(tmp_path, monkeypatch, clip, tiny_model_file, then, now):
    out = tmp_path / "out.mp4"
    interrupted(monkeypatch, clip, tiny_model_file, out, *then)
    translated = []
    real = segments._translate
    monkeypatch.setattr(segments, "_translate", lambda clip, k, *rest: translated.append(k) or real(clip, k, *rest))
    again = run_cli(*args(clip, tiny_model_file, out, *now))
    assert again.exit_code == 0, again.output
    assert translated == [] and out.exists()  # every segment was kept: only the join ran


def test_a_continued_run_says_how_far_the_last_one_got(tmp_path, monkeypatch, clip, tiny_model_file, alone):
    out = tmp_path / "out.mp4"
    interrupted(monkeypatch, clip, tiny_model_file, out, after=1)
    again = run_cli(*args(clip, tiny_model_file, out))
    assert again.exit_code == 0, again.output
    said = [line for line in again.stderr.splitlines() if "continuing" in line]
    assert said == [f"vidcycle: {out}: continuing: 1 of 3 segments already done"]
    assert out.read_bytes() == alone


def test_a_work_folder_that_cannot_be_written_is_named(tmp_path, monkeypatch, clip, tiny_model_file):
    out = tmp_path / "out.mp4"

    def read_only(path, line):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
    monkeypatch.setattr(journal, "_append", read_only)
    failed = run_cli(*args(clip, tiny_model_file, out))
    no_traceback(failed)
    named = [line for line in failed.stderr.splitlines() if "Read-only file system" in line]
    assert failed.exit_code == 9 and len(named) == 1, failed.output
    assert str(work_folder(out) / JOURNAL) in named[0]


def test_a_journal_from_before_defaults_were_resolved_is_continued(tmp_path, monkeypatch, clip, tiny_model_file,
                                                                    alone):
    out = tmp_path / "out.mp4"
    interrupted(monkeypatch, clip, tiny_model_file, out)
    header, *records = [json.loads(line) for line in journal_lines(out)]
    header["options"] |= {"codec": None, "crf": None, "preset": None}  # as journals wrote them before
    del header["options"]["pix_fmt"]
    write_journal(out, [json.dumps(header), *(json.dumps({k: v for k, v in r.items() if k != "end"})
                                              for r in records)])
    translated = []
    real = segments._translate
    monkeypatch.setattr(segments, "_translate", lambda clip, k, *rest: translated.append(k) or real(clip, k, *rest))
    again = run_cli(*args(clip, tiny_model_file, out))
    assert again.exit_code == 0, again.output
    assert translated == [] and "continuing: 3 of 3 segments already done" in again.stderr
    assert frame_times(out) == frame_times(tmp_path / "alone.mp4")  # where the alone fixture wrote it


def frame_times(path):
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return sorted(packet.pts * packet.time_base for packet in container.demux(stream) if packet.size)
