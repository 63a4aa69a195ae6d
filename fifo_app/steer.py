"""Prompt changes while a video streams: the visitor's request, its hand-off into the lease, the frame it took.

    visitor --change_prompt--> Steering.request: a file `NNNNNN.json` in the run's steer folder
    lease, between steps ----> Steerer.poll: FIFOStream.change_prompt, one PromptChange per request
    StepEvent.prompt_changes -> Steering.record: the run's schedule (next lease, share link, MP4, state)

The request travels as a file, as Stop does: on ZeroGPU a lease runs in another process, which sees
the session's files but not this process's memory. Requests are numbered; each lease is told the
last number already reported (`SteerWork.after`), so a request that arrives while one lease ends and
the next starts is taken by the next one, exactly once. A change enters at the queue's tail by
default (`entry="tail"`): every window that denoises the new frames sees the new prompt from their
first, noisiest step on; `"head"` reaches the screen about half a window sooner.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from fifo import FIFOStream, PromptSchedule
from fifo.engine import ENTRY_POINTS

from .estimate import format_seconds
from .limits import MAX_PROMPT_CHANGES, MAX_SCHEDULE_ENTRIES
from .settings import InputError, RunSettings, build_schedule

WAIT_S = 10.0  # how long the endpoint waits for the lease to take a change before answering "sent"
_NAME = re.compile(r"^(\d{6})\.json$")


# -- what crosses a lease boundary (picklable) -------------------------------------------------------


@dataclass(frozen=True)
class SteerWork:
    """A lease's part in steering: where requests arrive, the last one already reported, where the run ends."""

    folder: str
    after: int  # requests numbered up to this one were reported by earlier leases
    end: int  # the run's last video frame + 1: a change from there on would never be seen


@dataclass(frozen=True)
class PromptChange:
    """The outcome of one request in a lease: the video frame the prompt takes over from, or why it was refused."""

    id: int
    prompt: str
    frame: int | None  # None: refused
    schedule: str  # the stream's schedule text after it (unchanged when refused)
    refused: str = ""


# -- the lease side ----------------------------------------------------------------------------------


def read_requests(folder: str, after: int) -> list[tuple[int, str, str]]:
    """The requests numbered after `after`, in order: (id, prompt, entry); unreadable files are skipped."""
    try:
        names = os.listdir(folder)
    except OSError:  # no request yet (or the run's folder went): nothing to do
        return []
    out = []
    for name in sorted(names):
        m = _NAME.match(name)
        if m is None or int(m.group(1)) <= after:
            continue
        try:
            d = json.loads(Path(folder, name).read_text(encoding="utf-8"))
            out.append((int(m.group(1)), str(d["prompt"]), str(d["entry"])))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return out


class Steerer:
    """Applies the run's new requests to its stream between steps (in the lease, on the stream's own thread)."""

    def __init__(self, work: SteerWork) -> None:
        self.work = work
        self.after = work.after

    def poll(self, stream: FIFOStream) -> tuple[PromptChange, ...]:
        """Every request not yet taken, applied in order."""
        out = []
        for rid, prompt, entry in read_requests(self.work.folder, self.after):
            self.after = rid
            out.append(apply_change(stream, rid, prompt, entry, self.work.end))
        return tuple(out)


def apply_change(stream: FIFOStream, rid: int, prompt: str, entry: str, end: int) -> PromptChange:
    """`stream.change_prompt` at the entry point's frame, unless that frame is past the run's end."""
    before = stream.schedule.to_text()
    try:
        frame = stream.entry_frame(entry)
        if frame >= end:
            return PromptChange(rid, prompt, None, before, too_late(frame, end))
        frame = stream.change_prompt(prompt, frame=frame)
    except ValueError as e:  # a prompt the backbone refuses: the run goes on with the old one
        return PromptChange(rid, prompt, None, before, str(e))
    after = stream.schedule.to_text()
    if after == before:
        return PromptChange(rid, prompt, None, before, f"'{prompt[:60]}' is already the prompt from frame {frame} on")
    return PromptChange(rid, prompt, frame, after)


def too_late(frame: int, end: int) -> str:
    """The refusal of a change that would only take over after the run's last frame."""
    return (
        f"too late for this run: it would take over at frame {frame}, and the run ends at frame {end - 1}. "
        "Press Extend with the new prompt to go on with it"
    )


# -- the host side -----------------------------------------------------------------------------------


def check_prompt(prompt: Any, entry: Any) -> tuple[str, str]:
    """A change's prompt and entry point, validated like any prompt; one prompt, not a schedule."""
    if not isinstance(entry, str) or entry not in ENTRY_POINTS:
        raise InputError(f"entry={str(entry)[:40]!r}: allowed are {', '.join(ENTRY_POINTS)}")
    schedule = build_schedule(prompt)
    if len(schedule.entries) != 1 or schedule.entries[0][0] != 0:
        raise InputError(
            "a prompt change is one prompt, taking over from the frame this app picks: type it without 'FRAME:' lines"
        )
    return schedule.entries[0][1].strip(), entry


class Steering:
    """One run's prompt changes on the host: requests written for the lease, outcomes recorded and told."""

    def __init__(self, folder: Path, settings: RunSettings, start: int, frames: int, lead: int = 0) -> None:
        self.folder = Path(folder)
        # Frames count as the schedule counts them (the queue's); an uploaded clip plays `lead` frames before them
        self.lead = lead
        shutil.rmtree(self.folder, ignore_errors=True)  # an Extend reuses its video's folder: no old request survives
        self.folder.mkdir(parents=True)
        self.run = settings
        self.prompt = settings.prompt  # the run's schedule text, with every change recorded so far
        self.end = start + frames
        self.sent = 0  # requests written (numbered 1..sent)
        self.reported = 0
        self.outcomes: dict[int, PromptChange] = {}
        self.messages: dict[int, str] = {}  # what the visitor is told of each
        self.taken: list[PromptChange] = []
        self.late: list[str] = []
        self.last: PromptChange | None = None  # the latest outcome reported
        self.on_screen = start  # video frames made so far, as of the latest status
        self.closed = False
        self._cond = threading.Condition()

    def work(self) -> SteerWork:
        """The next lease's part."""
        with self._cond:
            return SteerWork(str(self.folder), self.reported, self.end)

    def request(self, prompt: str, entry: str) -> int:
        """Write a request for the lease; InputError when the run is over, the cap is reached, or nothing changes."""
        with self._cond:
            if self.closed:
                raise InputError("this page's run has ended: press Extend with the new prompt to go on with it")
            if self.sent >= MAX_PROMPT_CHANGES:
                raise InputError(f"this run has had {self.sent} prompt changes, the most one run may take here")
            entries = PromptSchedule.parse(self.prompt).entries
            if len(entries) >= MAX_SCHEDULE_ENTRIES:
                raise InputError(f"the run's prompt schedule holds {len(entries)} entries, the most allowed")
            if entries[-1] == (min(entries[-1][0], self.on_screen), prompt) and self.sent == self.reported:
                raise InputError(f"'{prompt[:80]}' is already the prompt being made: type a different one")
            self.sent += 1
            tmp = self.folder / f".{self.sent:06d}.{secrets.token_hex(4)}.part"
            try:  # renamed into place: the lease reads a whole request or none
                tmp.write_text(json.dumps({"prompt": prompt, "entry": entry}), encoding="utf-8")
                os.replace(tmp, self.folder / f"{self.sent:06d}.json")
            except OSError:
                self.sent -= 1
                tmp.unlink(missing_ok=True)
                raise InputError("this page's run is ending: press Extend with the new prompt to go on with it") from None
            return self.sent

    def record(self, changes: tuple[PromptChange, ...], on_screen: int, seconds_per_frame: float, measured: bool) -> None:
        """The lease's outcomes: taken changes join the run's schedule; anyone waiting is told when they show."""
        with self._cond:
            self.on_screen = on_screen
            for c in changes:
                self.outcomes[c.id] = c
                self.last = c
                self.messages[c.id] = c.refused or when(c, on_screen, seconds_per_frame, measured, self.lead)
                self.reported = max(self.reported, c.id)
                if c.frame is not None:
                    self.prompt = c.schedule
                    self.taken.append(c)
            self._cond.notify_all()

    def wait(self, rid: int, timeout: float = WAIT_S) -> PromptChange | None:
        """The outcome of request `rid` once the lease reports it; None after `timeout` or when the run ended first."""
        with self._cond:
            self._cond.wait_for(lambda: rid in self.outcomes or self.closed, timeout)
            return self.outcomes.get(rid)

    def close(self) -> None:
        """The run is over: requests no lease took are too late (said so); the folder goes."""
        with self._cond:
            if self.closed:
                return
            self.closed = True
            self.late = [p for rid, p, _ in read_requests(str(self.folder), self.reported)]
            self._cond.notify_all()
        shutil.rmtree(self.folder, ignore_errors=True)

    def settings(self, settings: RunSettings | None) -> RunSettings | None:
        """The run's settings with the changes recorded in their prompt schedule."""
        return None if settings is None else replace(settings, prompt=self.prompt)

    def status(self, on_screen: int, seconds_per_frame: float, measured: bool) -> str:
        """One line for the status panel: when the latest change reaches the screen, or what came too late."""
        self.on_screen = on_screen
        if self.late:
            return f"'{self.late[-1][:60]}' came as the run ended and was not used: press Extend with it"
        if self.last is not None and self.last.frame is None:
            return f"'{self.last.prompt[:60]}' was not used: {self.last.refused}"
        if not self.taken:
            return ""
        last = self.taken[-1]
        if self.closed and last.frame > on_screen:  # stopped before it showed: recorded, so Extend goes on with it
            at = _frame(last.frame, self.lead)
            return f"'{last.prompt[:60]}' takes over at {at}, after this video's end: Extend goes on with it"
        return when(last, on_screen, seconds_per_frame, measured, self.lead)


def when(change: PromptChange, on_screen: int, seconds_per_frame: float, measured: bool, lead: int = 0) -> str:
    """'moving up' takes over at frame 97 (in about 4 s at the current speed): frames to go times seconds per frame.

    `on_screen` and the change's frame count the queue's frames; `lead` uploaded frames play before them."""
    left = change.frame - on_screen
    if left <= 0:
        return f"'{change.prompt[:60]}' took over at {_frame(change.frame, lead)}"
    pace = "at the current speed" if measured else "by the estimate"
    at, eta = _frame(change.frame, lead), format_seconds(left * seconds_per_frame)
    return f"'{change.prompt[:60]}' takes over at {at} (in about {eta} {pace})"


def _frame(frame: int, lead: int) -> str:
    """A frame as the page names it: after an upload, both the schedule's number and the video's."""
    return f"new frame {frame} (video frame {frame + lead})" if lead else f"frame {frame}"


def ask(steering: Steering | None, prompt: Any, entry: Any, check: Callable[[str], None]) -> dict[str, Any]:
    """A visitor's change: validated, sent to the running lease, answered with the frame it takes over from."""
    text, entry = check_prompt(prompt, entry)
    if steering is None:
        raise InputError(
            "nothing is running on this page: a prompt change steers a video while Generate, Extend or Continue makes it"
        )
    check(text)
    rid = steering.request(text, entry)
    change = steering.wait(rid)
    if change is None and steering.closed:
        raise InputError(f"the run ended before '{text[:60]}' could enter it: press Extend with it to go on with it")
    if change is None:
        message = f"'{text[:60]}' is on its way into the queue: the status line says when it takes over"
        return {"prompt": text, "frame": None, "message": message}
    if change.frame is None:
        raise InputError(change.refused)
    return {"prompt": text, "frame": change.frame, "message": steering.messages[rid]}
