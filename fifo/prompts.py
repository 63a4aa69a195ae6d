"""Prompt schedules: the conditioning changes over time, indexed by emitted video frame."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Union

_LINE = re.compile(r"^\s*(\d+)\s*:\s*(.*?)\s*$")


@dataclass(frozen=True)
class PromptSchedule:
    """`entries[k] = (first_frame, prompt)`: prompt k holds from video frame `first_frame` on."""

    entries: tuple[tuple[int, str], ...]

    def __post_init__(self) -> None:
        if not self.entries:
            raise ValueError("prompt schedule is empty: give at least one prompt")
        starts = [s for s, _ in self.entries]
        if starts[0] != 0:
            raise ValueError(f"prompt schedule starts at frame {starts[0]}: the first prompt must start at frame 0")
        for a, b in zip(starts, starts[1:]):
            if b <= a:
                raise ValueError(f"prompt schedule frames must increase: {a} is followed by {b}")
        for s, p in self.entries:
            if not isinstance(p, str) or not p.strip():
                raise ValueError(f"prompt at frame {s} is empty")

    @classmethod
    def parse(cls, text: str) -> "PromptSchedule":
        """Parse lines `FRAME: prompt` (blank lines and `#` comments skipped); plain text is one prompt."""
        lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        if not lines:
            raise ValueError("prompt is empty")
        matches = [_LINE.match(ln) for ln in lines]
        if not any(matches):
            return cls(((0, " ".join(ln.strip() for ln in lines)),))
        bad = [ln.strip() for ln, m in zip(lines, matches) if not m]
        if bad:
            raise ValueError(f"schedule line {bad[0]!r}: expected 'FRAME: prompt', e.g. '48: a red ball moving up'")
        return cls(tuple((int(m.group(1)), m.group(2)) for m in matches))

    @classmethod
    def coerce(cls, prompt: "PromptLike") -> "PromptSchedule":
        """Accept a schedule, a prompt string (or schedule text), or (frame, prompt) pairs."""
        if isinstance(prompt, PromptSchedule):
            return prompt
        if isinstance(prompt, str):
            return cls.parse(prompt)
        if isinstance(prompt, dict):
            prompt = sorted(prompt.items())
        return cls(tuple((int(s), p) for s, p in prompt))

    def prompt_at(self, frame: int) -> str:
        """The prompt in force at video frame `frame` (frames before 0 take the first prompt)."""
        current = self.entries[0][1]
        for start, p in self.entries:
            if start > frame:
                break
            current = p
        return current

    def with_change(self, frame: int, prompt: str) -> "PromptSchedule":
        """A copy where `prompt` takes over from video frame `frame` on (entries at or after it are dropped)."""
        if isinstance(frame, bool) or not isinstance(frame, int) or frame < 0:
            raise ValueError(f"frame={frame!r}: must be a non-negative integer")
        if not isinstance(prompt, str) or not prompt.strip() or "\n" in prompt:
            raise ValueError(f"prompt={prompt!r}: must be one non-empty line")
        kept = tuple(e for e in self.entries if e[0] < frame)
        if kept and kept[-1][1] == prompt.strip():
            return PromptSchedule(kept)  # the prompt already in force goes on: no entry needed
        return PromptSchedule(kept + ((frame, prompt.strip()),))

    @property
    def prompts(self) -> list[str]:
        """The distinct prompts, in order of first use."""
        return list(dict.fromkeys(p for _, p in self.entries))

    def to_text(self) -> str:
        """The schedule as `FRAME: prompt` lines (a single prompt as itself)."""
        if len(self.entries) == 1:
            return self.entries[0][1]
        return "\n".join(f"{s}: {p}" for s, p in self.entries)


PromptLike = Union[str, PromptSchedule, Iterable[tuple[int, str]], dict]
