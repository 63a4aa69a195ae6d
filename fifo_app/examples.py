"""The example prompts and schedules in `examples/*.json`, filtered to the backbones usable here."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from fifo import BACKBONES

log = logging.getLogger("fifo_app")

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"


@dataclass(frozen=True)
class Example:
    """One example: what fills the prompt, backbone, length and seed widgets."""

    label: str
    prompt: str
    backbone: str
    seconds: float
    seed: int


def load_examples(folder: Path = EXAMPLES_DIR) -> list[Example]:
    """Every example in `folder/*.json` (files: {"examples": [{label, prompt, backbone, seconds, seed}, ...]}).

    A file in another format, or an entry missing a field, is skipped with a warning: the folder is
    shared with the README and the command line, and a stray file must not stop the app.
    """
    out = []
    for path in sorted(folder.glob("*.json")):
        try:
            entries = json.loads(path.read_text())["examples"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("skipping %s: not an examples file (%s)", path.name, e)
            continue
        for e in entries:
            try:
                out.append(Example(str(e["label"]), str(e["prompt"]), str(e["backbone"]), float(e["seconds"]), int(e["seed"])))
            except (KeyError, TypeError, ValueError) as err:
                log.warning("skipping an example in %s: %s", path.name, err)
    return out


def usable(examples: list[Example], gpu: bool) -> list[Example]:
    """The examples whose backbone is registered and can run here (real models need a GPU)."""
    return [e for e in examples if e.backbone in BACKBONES and (gpu or not BACKBONES[e.backbone].needs_gpu)]
