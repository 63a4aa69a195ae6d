"""The README and docs/ against the code: flags that exist, links that resolve, a table that matches.

Each checker is a pure function of a document's text, and each is also run on a planted defect
(an unknown flag, a broken link, a wrong table row) to show that it can fail.
"""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

import fifo
import fifo.__main__ as cli

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^(```+|~~~+)([^\n]*)\n(.*?)^\1[ \t]*$", re.M | re.S)
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
IMG_SRC = re.compile(r"<img\b[^>]*\bsrc=[\"']([^\"']+)[\"']", re.I)


def build_parser() -> argparse.ArgumentParser:
    """The command line's own parser, as `python -m fifo` builds it."""
    return (getattr(cli, "build_parser", None) or cli._parser)()


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(info string, body) of every fenced code block."""
    return [(m.group(2).strip(), m.group(3)) for m in FENCE.finditer(text)]


def without_code(text: str) -> str:
    """The text with fenced blocks and inline code spans blanked out (links there are examples)."""
    text = FENCE.sub("", text)
    return re.sub(r"`[^`\n]*`", "", text)


def fifo_commands(text: str) -> list[list[str]]:
    """The arguments of every `python -m fifo` / `torchrun ... -m fifo` command in the fenced blocks."""
    out = []
    for _, body in fenced_blocks(text):
        for line in body.replace("\\\n", " ").splitlines():
            try:
                words = shlex.split(line, comments=True)
            except ValueError:  # an unbalanced quote: not a shell line
                continue
            for i in range(len(words) - 1):
                if words[i] == "-m" and words[i + 1] == "fifo":
                    out.append(words[i + 2 :])
                    break
    return out


def unknown_flags(text: str, parser: argparse.ArgumentParser) -> list[str]:
    """Flags of `python -m fifo` commands in `text` that the parser does not define."""
    known = set(parser._option_string_actions)
    bad = []
    for args in fifo_commands(text):
        for a in args:
            if a == "--":
                break
            if a.startswith("-") and not re.fullmatch(r"-\d[\d.e+-]*", a) and a.split("=", 1)[0] not in known:
                bad.append(a)
    return bad


def prose_flags(text: str, heading: str) -> list[str]:
    """`--flags` in the inline code of the section under `heading`: lists of flags, and `-m fifo` commands."""
    m = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    if not m:
        return []
    out = []
    for span in re.findall(r"`([^`]+)`", FENCE.sub("", m.group(1))):
        words = span.split()
        if "fifo" in words and "-m" in words:
            words = words[words.index("fifo") + 1 :]
        elif not all(w.startswith("--") for w in words):
            continue
        out += [w.split("/")[0] for w in words if w.startswith("--")]
    return out


def broken_links(text: str, where: Path) -> list[str]:
    """Relative link and image targets in `text` (a file in folder `where`) that name no file."""
    bad = []
    prose = without_code(text)
    for target in LINK.findall(prose) + IMG_SRC.findall(prose):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("#"):
            continue  # a URL, a mail address or an anchor in the same page
        path = target.split("#", 1)[0].split("?", 1)[0]
        if not (where / path).exists():
            bad.append(target)
    return bad


def table_rows(text: str, first_header: str) -> list[list[str]]:
    """Rows of the first Markdown table whose header starts with `first_header`, cells stripped."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("|") and line.strip("| ").startswith(first_header):
            rows = []
            for row in lines[i + 2 :]:
                if not row.startswith("|"):
                    break
                rows.append([c.strip() for c in row.strip().strip("|").split("|")])
            return rows
    return []


def sampled_as(spec) -> str:
    """The models table's noise-level column: flow shift, fps fed to the model, latent rescale, distilled steps."""
    parts = []
    if spec.flow_shift is not None:
        parts.append(f"shift {spec.flow_shift:g}")
    if spec.fps_condition is not None:
        parts.append(f"fps {spec.fps_condition:g}")
    if spec.latent_rescale is not None:
        a, b, mid = spec.latent_rescale
        parts.append(f"rescale {a:g}→{b:g} below t={mid}")
    if spec.distilled is not None:
        t = "/".join(f"{v:g}" for v in spec.distilled.timesteps)
        parts.append(f"{spec.distilled.steps} steps at t={t} ({spec.distilled.solver}), b={spec.defaults.frames_per_rung}")
    return ", ".join(parts) or "–"


def expected_models_table() -> list[list[str]]:
    """The README's models table, derived from the registry's specs."""
    rows = []
    for spec in fifo.BACKBONES.values():
        d = spec.defaults
        rows.append(
            [
                f"`{spec.name}`",
                spec.model_id or "(built in)",
                f"{d.width}x{d.height}",
                str(d.frames_per_window),
                f"{d.partitions}, {'on' if d.lookahead else 'off'}",
                f"{d.guidance_scale:g}",
                f"~{spec.vram_gb:g} GB" if spec.needs_gpu else "CPU",
                sampled_as(spec),
                spec.licence,
            ]
        )
    return rows


def table_mismatches(text: str) -> list[str]:
    """Differences between the README's models table and the registry, one line each."""
    got, want = table_rows(text, "name | model id"), expected_models_table()
    out = [f"row {r[0]}: README has {g}, the registry says {r}" for g, r in zip(got, want) if g != r]
    if len(got) != len(want):
        out.append(f"README lists {[g[0] for g in got]}, the registry {[r[0] for r in want]}")
    return out


# -- the repository's docs -------------------------------------------------------------------------


def test_the_docs_are_where_the_readme_says():
    names = {p.name for p in DOCS}
    assert {"README.md", "app.md", "official.md", "frontier.md", "known-frames.md", "drift.md", "benchmarks.md", "quality.md", "toy-world.md", "design.md", "development.md", "few-step.md"} <= names


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_fifo_flag_shown_exists(doc):
    assert unknown_flags(doc.read_text(), build_parser()) == []


def test_the_readme_shows_fifo_commands_and_its_prose_flags_exist():
    text = (ROOT / "README.md").read_text()
    assert len(fifo_commands(text)) >= 4
    flags = prose_flags(text, "Command line")
    assert "--window-batch" in flags and "--dtype" in flags  # the section was found and read
    known = set(build_parser()._option_string_actions)
    assert [f for f in flags if f not in known] == []


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_relative_link_and_image_resolves(doc):
    assert broken_links(doc.read_text(), doc.parent) == []


def test_the_readme_models_table_matches_the_registry():
    assert table_mismatches((ROOT / "README.md").read_text()) == []


WORK_LOG = re.compile(r"\bI\b(?! ?[/=])|\bI've\b|this round|previous session|this session")


def work_log_lines(text: str) -> list[str]:
    """Prose lines written as a log of the work ("I checked", "this round") rather than as documentation."""
    return [line.strip() for line in without_code(text).splitlines() if WORK_LOG.search(line)]


def test_no_work_log_voice_in_the_docs():
    assert [f"{d.name}: {hit}" for d in DOCS for hit in work_log_lines(d.read_text())] == []


def test_the_worked_example_of_a_backbone_runs():
    text = (ROOT / "docs" / "development.md").read_text()
    section = text.split("### A worked example", 1)[1].split("\n### ", 1)[0]
    code = [body for info, body in fenced_blocks(section) if info == "python"]
    assert len(code) == 1
    exec(compile(code[0], "docs/development.md", "exec"), {"__name__": "worked_example"})


# -- the checkers fail on planted defects ----------------------------------------------------------


def test_an_unknown_flag_is_caught():
    planted = 'Run it:\n\n```bash\npython -m fifo "a red ball" --frames 10 --compile -o x.mp4\n```\n'
    assert unknown_flags(planted, build_parser()) == ["--compile"]
    wrapped = "```\ntorchrun --nproc_per_node 2 -m fifo --frames 10 \\\n  --channels-last=1\n```\n"
    assert unknown_flags(wrapped, build_parser()) == ["--channels-last=1"]
    assert unknown_flags("```\npython -m fifo --frames 10 --no-lookahead --eta -1\n```\n", build_parser()) == []


def test_an_unknown_prose_flag_is_caught():
    planted = (
        "## Command line\n\nFlags: `--frames --compile`, `--lookahead/--no-lookahead`, `--eta\n--fps`;\n"
        "`torchrun --nproc_per_node 2 -m fifo --channels-last`, `ls --all x`.\n\n## Next\n`--other`\n"
    )
    assert prose_flags(planted, "Command line") == ["--frames", "--compile", "--lookahead", "--eta", "--fps", "--channels-last"]


def test_work_log_voice_is_caught():
    planted = "The toy world.\nI checked it by hand.\nAfter this round's changes, faster.\nDisk I/O is `I` here.\n"
    assert work_log_lines(planted) == ["I checked it by hand.", "After this round's changes, faster."]


def test_a_broken_link_or_image_is_caught(tmp_path):
    (tmp_path / "here.md").write_text("x")
    planted = (
        "[ok](here.md#part) [web](https://example.org/x.md) [anchor](#top) ![gone](missing.png)\n"
        '[broken](docs/nope.md) <img src="also-missing.gif">\n`[in code](nope2.md)`\n'
        "```\n[in a block](nope3.md)\n```\n"
    )
    assert broken_links(planted, tmp_path) == ["missing.png", "docs/nope.md", "also-missing.gif"]


def models_table(rows: list[list[str]]) -> str:
    """A README-style models table with these rows."""
    head = "| name | model id | resolution | f (latent frames) | n, lookahead | guidance | VRAM (fp16, estimate) | licence |"
    return "\n".join([head, "|---" * 8 + "|", *("| " + " | ".join(r) + " |" for r in rows)]) + "\n"


def test_a_wrong_or_missing_table_row_is_caught():
    rows = expected_models_table()
    assert table_mismatches(models_table(rows)) == []
    wrong = [r[:] for r in rows]
    wrong[0][5] = "7"  # the toy's guidance
    assert len(table_mismatches(models_table(wrong))) == 1 and "`toy`" in table_mismatches(models_table(wrong))[0]
    missing = table_mismatches(models_table(rows[:1] + rows[2:]))
    assert any("README lists" in m for m in missing)
