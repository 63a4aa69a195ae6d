"""Fuzz: every endpoint of the running app, with wrong, out-of-range, huge, empty and malformed values.

The app runs once, in its own process on loopback (the toy backbone), as a public Space would. The
endpoints come from the server itself: every backend function in its `/config`, which is a superset
of what `Client.view_api` lists (private endpoints, the ones the page calls by index, included: a
browser or a script can call them just the same). The cases come from each input's component type,
so a new endpoint or input is fuzzed without touching this file. Each case replaces ONE input of an
otherwise cheap, valid call (the component's own value, or the table below), plus a few malformed
calls per endpoint (no data, an extra value, data that is not a list).

For every case the answer must be a success or a refusal with a clear message: not Gradio's
generic error (the app let an exception escape), no Python exception names, and nothing that shows
the server's insides (a path, a traceback, torch's `weights_only` advice). A malicious pickle must
never run. The server must be alive at the end and answer the valid calls it answered at the start.
A failure lists every offending (endpoint, case, message) on one line each.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import socket
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent

# -- what this test knows about the app: cheap valid values by input label, and how to stop a run --
BASE_BY_LABEL: dict[str, Any] = {
    "Prompt": "a red ball moving right",
    "Length": 8,
    "Extend by": 8,
    "in": "frames",
    "random seed": False,
    "lookahead": "off",
    "A: lookahead": "off",
    "B: lookahead": "off",
    "1st": "?prompt=a+red+ball+moving+right&frames=8",  # settings_from_link's one argument
    "Saved state (.pt)": "valid state",  # a key of `uploads`: the toy state saved by a short run
}
BASE_BY_TYPE: dict[str, Any] = {"dataset": 0, "textbox": "a red ball moving right", "api": ""}
STOP_API_NAME = "stop"  # called for a case's session when it runs longer than CALL_TIMEOUT
PRIME_API_NAME = "generate"  # its valid call opens each queued endpoint's session, so Extend has a video

FORBIDDEN = ("/tmp/", "/root/", "site-packages", '.py"', "Traceback", "weights_only", str(ROOT))
RAW_EXCEPTION = re.compile(r"\b[A-Z][A-Za-z]*(Error|Exception)\b|Something went wrong")
CALL_TIMEOUT = 30.0  # a case still running after this is stopped and reported
WORKERS = 4
HUGE_TEXT = "x" * 200_000
NUL_PROMPT = "a red ball\x00 moving right"  # a prompt the toy accepts but for the NUL byte
LONG_PROMPT = ("a red ball moving right " * 41).strip()  # 983 characters of words the toy knows


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the server ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The app in its own process on a free loopback port, its temp folder and Gradio's cache under `work`."""
    work = tmp_path_factory.mktemp("fuzz")
    (work / "gradio").mkdir()
    port = _free_port()
    env = {**os.environ, "TMPDIR": str(work), "GRADIO_TEMP_DIR": str(work / "gradio"),
           "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    log = open(work / "server.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-c", f"import app; app.launch(server_name='127.0.0.1', server_port={port}, quiet=True)"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        end = time.monotonic() + 240
        while True:
            assert proc.poll() is None, f"the app exited with {proc.returncode}: {(work / 'server.log').read_text()[-2000:]}"
            try:
                if httpx.get(url + "config", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < end, "the app did not start within 240 s"
            time.sleep(0.5)
        yield url, proc, work
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


# -- the raw protocol the page itself uses (it reaches private endpoints too) ----------------------


def call(url: str, fn_index: int, data: Any, session: str | None = None, stop_index: int | None = None) -> dict:
    """Join the queue with `data` for `fn_index` and read its events; {"ok", "message", "output"}."""
    session = session or uuid.uuid4().hex[:12]
    body = {"data": data, "fn_index": fn_index, "session_hash": session, "event_data": None, "trigger_id": None}
    with httpx.Client(base_url=url, timeout=15) as http:
        r = http.post("gradio_api/queue/join", json=body)
        if r.status_code != 200:  # refused before it ran: the body is the message
            return {"ok": False, "message": f"HTTP {r.status_code}: {r.text[:2000]}", "output": None}
        event_id = r.json()["event_id"]
        start, stopped = time.monotonic(), False
        while time.monotonic() - start < 3 * CALL_TIMEOUT:  # the stream may close early: open it again
            with http.stream("GET", "gradio_api/queue/data", params={"session_hash": session},
                             timeout=httpx.Timeout(15, read=5)) as stream:
                lines = stream.iter_lines()
                while time.monotonic() - start < 3 * CALL_TIMEOUT:
                    try:
                        line = next(lines)
                    except httpx.ReadTimeout:
                        line = ""
                    except StopIteration:
                        break
                    if not stopped and time.monotonic() - start > CALL_TIMEOUT:
                        stopped = True
                        if stop_index is not None:
                            call(url, stop_index, [], session=session)
                    if not line.startswith("data:"):
                        continue
                    msg = json.loads(line[5:])
                    if msg.get("event_id") not in (None, event_id):
                        continue
                    if msg.get("msg") == "unexpected_error":
                        return {"ok": False, "message": str(msg.get("message")), "output": None}
                    if msg.get("msg") != "process_completed":
                        continue
                    out = msg.get("output") or {}
                    if stopped:
                        return {"ok": False, "output": out,
                                "message": f"accepted, still running after {CALL_TIMEOUT:.0f} s (stopped)"}
                    if msg.get("success"):
                        return {"ok": True, "message": None, "output": out.get("data")}
                    return {"ok": False, "message": out.get("error"), "output": None}
            time.sleep(0.2)
        return {"ok": False, "message": f"no result after {3 * CALL_TIMEOUT:.0f} s", "output": None}


def upload(url: str, name: str, content: bytes) -> dict:
    """Upload a file as the page does; the FileData value that names it."""
    r = httpx.post(url + "gradio_api/upload", files={"files": (name, content)}, timeout=60)
    r.raise_for_status()
    return {"path": r.json()[0], "orig_name": name, "meta": {"_type": "gradio.FileData"}}


def _strip_files(value: Any) -> Any:
    """The value with file references (whose server paths are the protocol, not a message) left out."""
    if isinstance(value, dict):
        if isinstance(value.get("meta"), dict) and value["meta"].get("_type") == "gradio.FileData":
            return None
        return {k: _strip_files(v) for k, v in value.items() if k not in ("path", "url")}
    if isinstance(value, list):
        return [_strip_files(v) for v in value]
    return value


def problem(result: dict, forbidden: tuple[str, ...] = FORBIDDEN) -> str | None:
    """What is wrong with one answer, or None when it is a success or a clear refusal."""
    if result["ok"]:
        text = json.dumps(_strip_files(result["output"]), ensure_ascii=False)
        bad = [f for f in forbidden if f in text]
        return f"success output shows {bad}" if bad else None
    msg = result["message"]
    if not msg:
        return "no message (Gradio's generic error: an exception escaped the app)"
    bad = [f for f in forbidden if f in msg]
    if bad:
        return f"message shows {bad}"
    if RAW_EXCEPTION.search(msg):
        return "message shows a raw exception"
    if msg.startswith(("accepted, still running", "no result")):
        return "did not finish"
    return None


# -- the cases ------------------------------------------------------------------------------------------


def _pickle_that_runs(marker: Path) -> bytes:
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    return pickle.dumps({"queue": Evil()})


def _state_files() -> dict[str, bytes]:
    """A valid toy state and mutants of it that unpickle fine but are wrong inside."""
    import torch

    from fifo import FIFOConfig, load_backbone
    from fifo.engine import FIFOStream

    stream = FIFOStream(load_backbone("toy"), "a red ball moving right", FIFOConfig(partitions=1, lookahead=False),
                        seed=1, height=64, width=64)
    for _ in stream.frames(2):
        pass
    good = stream.state()
    import dataclasses

    d = dataclasses.asdict(good)

    def save(**changes) -> bytes:
        buf = io.BytesIO()
        torch.save({**d, **changes}, buf)
        return buf.getvalue()

    cfg_missing = {k: v for k, v in d["config"].items() if k not in ("partitions", "frames_per_window")}
    return {
        "valid state": save(),
        "state: queue of the wrong size": save(queue=d["queue"][:, :3]),
        "state: queue is a string": save(queue="not a tensor"),
        "state: config keys missing": save(config=cfg_missing),
        "state: negative step": save(step=-5, frames_emitted=-5),
        "state: float pending frames": save(pending=torch.rand(2, 64, 64, 3)),
        "state: huge size": save(height=10**9, width=10**9),
        "state: unknown backbone": save(backbone="../../etc/passwd"),
    }


@pytest.fixture(scope="module")
def uploads(server) -> dict[str, dict]:
    """Hostile files, uploaded once: name -> FileData."""
    url, _, work = server
    return make_uploads(url, work / "pwned")


def make_uploads(url: str, marker: Path) -> dict[str, dict]:
    """Upload every hostile file (the malicious pickle touches `marker` if it ever runs): name -> value."""
    files = {
        "garbage .pt": ("garbage.pt", os.urandom(4096)),
        "malicious pickle .pt": ("evil.pt", _pickle_that_runs(marker)),
        "huge text .pt": ("huge.pt", HUGE_TEXT.encode() * 20),
        "empty .pt": ("empty.pt", b""),
        "NUL bytes .pt": ("nul.pt", b"\x00" * 100),
        "not a .pt": ("notes.txt", b"hello"),
    }
    files.update({k: ("state.pt", v) for k, v in _state_files().items()})
    out = {k: upload(url, name, content) for k, (name, content) in files.items()}
    out["server file outside uploads"] = {"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}}
    out["path traversal"] = {"path": "../../../../etc/passwd", "meta": {"_type": "gradio.FileData"}}
    out["file as a plain string"] = "/etc/passwd"
    out["file dict without path"] = {"meta": {"_type": "gradio.FileData"}}
    return out


GENERIC = {  # every input gets these
    "None": None,
    "list for a scalar": ["a", "b"],
    "dict": {"a": 1},
    "NUL bytes": NUL_PROMPT,
    "huge text": HUGE_TEXT,
}
NUMERIC = {
    "1e308": 1e308,
    "-1e308": -1e308,
    "10**400": 10**400,
    "negative": -1,
    "zero": 0,
    "fraction": 0.5,
    "numeric string": "12",
    "word": "banana",
}
BY_TYPE: dict[str, dict[str, Any]] = {
    "number": NUMERIC,
    "slider": NUMERIC,
    "dataset": {"-1": -1, "999": 999, "word": "x", "1e308": 1e308},
    "dropdown": {"not a choice": "banana", "10**400": 10**400, "negative": -1, "bool": True},
    "radio": {"not a choice": "banana", "number": 3},
    "checkbox": {"word": "yes", "number": 2},
    "textbox": {"number": 12345, "empty": "", "spaces": "   ", "markdown link": "[x](https://example.com) <img src=x>",
                "non-ASCII only": "红色的球向右移动", "long": LONG_PROMPT},
    "api": {"number": 12345, "empty": "", "markdown link": "?prompt=[x](https://e.com)&seed=<img src=x>",
            "10**400 in a link": "?frames=" + "9" * 400, "NUL in a link": "?prompt=a%00b"},
    "dataframe": {
        "string": "a string",
        "rows not lists": {"headers": ["a", "b"], "data": ["x", "y"]},
        "wrong widths": {"headers": ["from frame", "prompt"], "data": [[1], [2, "a", "b"]]},
        "1e308 frame": {"headers": ["from frame", "prompt"], "data": [[1e308, "a red ball"]]},
        "negative frame": {"headers": ["from frame", "prompt"], "data": [[-5, "a red ball"]]},
        "NUL prompt": {"headers": ["from frame", "prompt"], "data": [[0, NUL_PROMPT]]},
        "many long rows": {"headers": ["from frame", "prompt"], "data": [[2 * i, LONG_PROMPT] for i in range(64)]},
    },
}
FILE_TYPES = ("file", "video", "image", "audio", "model3d", "uploadbutton")


def base_value(comp: dict, uploads: dict[str, Any]) -> Any:
    """A cheap valid value for one input component."""
    props, kind = comp["props"], comp["type"]
    if props.get("label") in BASE_BY_LABEL:
        value = BASE_BY_LABEL[props["label"]]
        return uploads[value] if kind in FILE_TYPES else value
    if kind in ("dropdown", "radio") and props.get("choices"):
        numbers = [c[1] for c in props["choices"] if isinstance(c[1], (int, float)) and not isinstance(c[1], bool)]
        if numbers:  # the cheapest numeric choice: fewest partitions, smallest size...
            return min(numbers)
    if props.get("value") is not None:
        return props["value"]
    return BASE_BY_TYPE.get(kind)


def cases_for(comp: dict, uploads: dict[str, dict]) -> dict[str, Any]:
    """Bad values for one input, from its component type."""
    kind = comp["type"]
    if kind in FILE_TYPES:
        return {"None": None, "number": 5, **uploads}
    return {**GENERIC, **BY_TYPE.get(kind, NUMERIC)}


def endpoints(url: str) -> list[dict]:
    """Every backend function of the app: fn_index, name, visibility, input components."""
    cfg = httpx.get(url + "config", timeout=30).json()
    comps = {c["id"]: c for c in cfg["components"]}
    out = []
    for dep in cfg["dependencies"]:
        if not dep.get("backend_fn"):
            continue
        name = dep.get("api_name") or f"fn{dep['id']}"
        out.append({"fn_index": dep["id"], "name": name, "visibility": dep.get("api_visibility"),
                    "queue": dep.get("queue") is not False,
                    "inputs": [comps[i] for i in dep["inputs"]]})
    return out


def build_jobs(eps: list[dict], bases: dict[int, list], uploads: dict[str, dict]) -> list[tuple[dict, str, Any]]:
    """(endpoint, case name, data) for every case of every endpoint."""
    jobs: list[tuple[dict, str, Any]] = []
    for e in eps:
        base = bases[e["fn_index"]]
        jobs += [(e, "valid call", base), (e, "no data", []), (e, "an extra value", [*base, "extra"]),
                 (e, "data not a list", "x")]
        for i, comp in enumerate(e["inputs"]):
            label = (comp["props"].get("label") or comp["type"])[:24]
            for case, value in cases_for(comp, uploads).items():
                jobs.append((e, f"{label}={case}", [*base[:i], value, *base[i + 1:]]))
    return jobs


def run_jobs(url: str, jobs: list[tuple[dict, str, Any]], bases: dict[int, list], eps: list[dict]) -> list[dict]:
    """Every job's answer, in order.

    Queued endpoints (one run at a time) go in one lane, one session per endpoint, opened by the
    valid call of PRIME_API_NAME; the rest run beside it, a fresh session per call.
    """
    results: list[dict | None] = [None] * len(jobs)
    stop_index = next((e["fn_index"] for e in eps if e["name"] == STOP_API_NAME), None)
    prime = next((e["fn_index"] for e in eps if e["name"] == PRIME_API_NAME), None)

    def queued_lane() -> None:
        for e in eps:
            if not e["queue"]:
                continue
            session = uuid.uuid4().hex[:12]
            if prime is not None:
                call(url, prime, bases[prime], session=session, stop_index=stop_index)
            for k, (je, _, data) in enumerate(jobs):
                if je is e:
                    results[k] = call(url, e["fn_index"], data, session=session, stop_index=stop_index)

    def direct_lane(indices: list[int]) -> None:
        for k in indices:
            results[k] = call(url, jobs[k][0]["fn_index"], jobs[k][2], stop_index=stop_index)

    direct = [k for k, j in enumerate(jobs) if not j[0]["queue"]]
    with ThreadPoolExecutor(WORKERS) as pool:
        futures = [pool.submit(queued_lane)] + [pool.submit(direct_lane, direct[w::WORKERS - 1]) for w in range(WORKERS - 1)]
        for f in futures:
            f.result()
    return results  # type: ignore[return-value]

def call_primed(url: str, eps: list[dict], bases: dict[int, list], fn_index: int) -> dict:
    """The valid call of `fn_index` in a fresh session opened as the fuzz opens them."""
    session = uuid.uuid4().hex[:12]
    prime = next((e["fn_index"] for e in eps if e["name"] == PRIME_API_NAME), None)
    if prime is not None and prime != fn_index:
        call(url, prime, bases[prime], session=session)
    return call(url, fn_index, bases[fn_index], session=session)


# Payloads Gradio itself refuses before any app code runs, with its generic error (no message, no
# path): a request with no data, a file input given something that is not an uploaded file, a table
# given no table, and the example gallery's own loader (Gradio's code) given an index it lacks.
NOT_A_PAYLOAD = ("no data",)
NOT_ITS_KIND = ("=None", "=number", "=file as a plain string", "=file dict without path",
                "=server file outside uploads", "=path traversal")
GRADIO_OWNED = ("load_example",)


def refused_before_the_app(endpoint: dict, case: str) -> bool:
    """Whether this case is refused by Gradio's own payload checks, before the app's handler runs."""
    if case in NOT_A_PAYLOAD or endpoint["name"].startswith(GRADIO_OWNED):
        return True
    label = case.split("=", 1)[0]
    comp = next((c for c in endpoint["inputs"] if (c["props"].get("label") or c["type"])[:24] == label), None)
    kind = comp["type"] if comp else ""
    return kind in (*FILE_TYPES, "dataframe") and case.endswith(NOT_ITS_KIND)


@pytest.mark.timeout(900)  # ~1,000 calls; minutes on a loaded 2-core machine
def test_every_endpoint_refuses_bad_input_clearly(server, uploads):
    from gradio_client import Client

    url, proc, work = server
    eps = endpoints(url)
    client = Client(url, verbose=False, download_files=False)
    try:
        listed = client.view_api(all_endpoints=True, print_info=False, return_format="dict")
    finally:
        client.close()
    names = {e["name"] for e in eps}
    missing = {n.lstrip("/") for n in listed["named_endpoints"]} - names
    assert not missing, f"view_api lists endpoints that /config does not: {missing}"
    private = [e["name"] for e in eps if e["visibility"] == "private"]

    bases = {e["fn_index"]: [base_value(c, uploads) for c in e["inputs"]] for e in eps}
    jobs = build_jobs(eps, bases, uploads)
    t0 = time.monotonic()
    results = run_jobs(url, jobs, bases, eps)
    elapsed = time.monotonic() - t0

    offending, ok, refused = [], 0, 0
    forbidden = (*FORBIDDEN, str(work))  # the server's temp folder, wherever TMPDIR points
    by_gradio = 0
    for (e, case, _), r in zip(jobs, results):
        why = problem(r, forbidden)
        if why is not None and not r["message"] and refused_before_the_app(e, case):
            by_gradio += 1  # Gradio refused a payload that is not its component's kind; the app never saw it
            continue
        if why is None:
            ok += r["ok"]
            refused += not r["ok"]
        else:
            msg = (r["message"] or "").replace("\n", " ")
            offending.append(f"{e['name']} | {case} | {why} | {msg[:160]!r}")
    valid_before = {e["fn_index"] for (e, case, _), r in zip(jobs, results) if case == "valid call" and r["ok"]}

    # alive: the process, its page, and every valid call that worked before all this
    assert proc.poll() is None, f"the server died (exit {proc.returncode})"
    assert httpx.get(url + "config", timeout=30).status_code == 200
    after = {k: call_primed(url, eps, bases, k) for k in valid_before}
    dead = [f"{e['name']}: {after[e['fn_index']]['message']}" for e in eps
            if e["fn_index"] in after and not after[e["fn_index"]]["ok"]]
    assert not (work / "pwned").exists(), "a malicious pickle ran on the server"

    not_valid = [f"{e['name']} ({r['message']!r:.120})" for (e, case, _), r in zip(jobs, results)
                 if case == "valid call" and not r["ok"]]
    summary = (f"{len(eps)} endpoints ({len(private)} private: {', '.join(private)}), {len(jobs)} calls in "
               f"{elapsed:.0f} s: {ok} succeeded, {refused} refused clearly, {by_gradio} refused by Gradio before the app, {len(offending)} offending; "
               f"valid call refused for: {', '.join(not_valid) or 'none'}")
    print("\nfuzz: " + summary)
    for line in offending:
        print("  " + line)
    assert not dead, "valid calls that worked before the fuzz fail after it: " + "; ".join(dead)
    assert not offending, summary + "\n" + "\n".join(offending)
