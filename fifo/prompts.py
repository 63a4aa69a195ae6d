"""Prompt schedules: the conditioning changes over time, indexed by emitted video frame."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Union

_LINE = re.compile(r"^\s*(\d+)\s*(?:~\s*(\d+)\s*)?:\s*(.*?)\s*$")  # FRAME[~BLEND]: prompt


@dataclass(frozen=True)
class PromptSchedule:
    """`entries[k] = (first_frame, prompt)`: prompt k holds from video frame `first_frame` on.

    `blends[k]` (optional; `()` means all 0) is the number of video frames over which prompt k
    fades in from prompt k - 1, its conditioning interpolated (0: a cut). Text: `FRAME~BLEND: prompt`.
    """

    entries: tuple[tuple[int, str], ...]
    blends: tuple[int, ...] = ()

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
        if self.blends:
            b = self.blends
            if len(b) != len(self.entries) or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in b) or b[0]:
                raise ValueError(f"blends={b!r}: one non-negative integer per entry, 0 for the first")
            for (s0, _), (s1, _), n in zip(self.entries, self.entries[1:], b):
                if n > s1 - s0:
                    raise ValueError(f"the blend from frame {s0} spans {n} frames, past the next entry at frame {s1}")
            if not any(b):
                object.__setattr__(self, "blends", ())

    def before(self, frame: int) -> "PromptSchedule":
        """Only the entries that start before video frame `frame` (the first always stays), with their blends."""
        keep = [k for k, (start, _) in enumerate(self.entries) if k == 0 or start < frame]
        blends = tuple(self.blends[k] for k in keep) if self.blends else ()
        return PromptSchedule(tuple(self.entries[k] for k in keep), blends)

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
        blends = tuple(int(m.group(2) or 0) for m in matches)
        return cls(tuple((int(m.group(1)), m.group(3)) for m in matches), blends)

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

    def blend_at(self, frame: int) -> tuple[str, str, float]:
        """(previous prompt, prompt, weight of the prompt) at video frame `frame`; weight 1 outside a blend.

        In a blend of `n` frames from frame `s`, frame `s + i` weighs `(i + 1) / (n + 1)`.
        """
        k = max(0, sum(1 for s, _ in self.entries if s <= frame) - 1)
        start, p = self.entries[k]
        n = self.blends[k] if self.blends else 0
        if n and frame - start < n:
            return self.entries[k - 1][1], p, (frame - start + 1) / (n + 1)
        return p, p, 1.0

    def with_change(self, frame: int, prompt: str, blend: int = 0) -> "PromptSchedule":
        """A copy where `prompt` takes over from video frame `frame` on, faded in over `blend` frames
        (entries at or after `frame` are dropped)."""
        if isinstance(frame, bool) or not isinstance(frame, int) or frame < 0:
            raise ValueError(f"frame={frame!r}: must be a non-negative integer")
        if isinstance(blend, bool) or not isinstance(blend, int) or blend < 0:
            raise ValueError(f"blend={blend!r}: must be a non-negative integer (video frames)")
        if not isinstance(prompt, str) or not prompt.strip() or "\n" in prompt:
            raise ValueError(f"prompt={prompt!r}: must be one non-empty line")
        n = sum(1 for s, _ in self.entries if s < frame)
        kept = self.entries[:n]
        blends = list(self.blends[:n] if self.blends else [0] * n)
        if kept:  # a blend still running at `frame` ends there
            blends[-1] = min(blends[-1], frame - kept[-1][0])
        if kept and kept[-1][1] == prompt.strip():
            return PromptSchedule(kept, tuple(blends))  # the prompt already in force goes on: no entry needed
        return PromptSchedule(kept + ((frame, prompt.strip()),), tuple(blends) + (blend if kept else 0,))

    @property
    def prompts(self) -> list[str]:
        """The distinct prompts, in order of first use."""
        return list(dict.fromkeys(p for _, p in self.entries))

    def to_text(self) -> str:
        """The schedule as `FRAME: prompt` lines (a single prompt as itself)."""
        if len(self.entries) == 1:
            return self.entries[0][1]
        b = self.blends or (0,) * len(self.entries)
        return "\n".join(f"{s}~{n}: {p}" if n else f"{s}: {p}" for (s, p), n in zip(self.entries, b))


PromptLike = Union[str, PromptSchedule, Iterable[tuple[int, str]], dict]
