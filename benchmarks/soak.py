"""Soak: one app process serving a few hundred short runs; do its memory, descriptors and disk level off?

    nice -n 10 python benchmarks/soak.py                    # 4 quarters of 60 sequential runs + 4 concurrent clients
    nice -n 10 python benchmarks/soak.py --runs 100 --clients 2 --max-minutes 10
    nice -n 10 python benchmarks/soak.py --env MALLOC_ARENA_MAX=1   # an environment variable for the server only
    nice -n 10 python benchmarks/soak.py --set height=128 --set width=128 --set partitions=4   # bigger runs

The app runs as its own process (`app.launch`, the toy backbone, 127.0.0.1 on a free port) with
TMPDIR and GRADIO_TEMP_DIR pointed at fresh folders, so the app's scratch space and Gradio's cache
(uploads, outputs served to clients) are measured separately and deleted afterwards. Each quarter
is `--runs / 4` sequential runs from one client (one session, as a visitor pressing Generate again
and again), then one wave of `--clients` fresh clients at once (new sessions, the crowd). After a
first warm-up run and after each quarter it prints the server's resident set (RSS), its open file
descriptors, threads and child processes, and the bytes under both folders; the RSS is split by
kind of mapping (glibc's main heap, its other arenas, other anonymous memory, mapped files) to show
where growth comes from. The verdict compares
RSS at the end with RSS at the half: a server that keeps a public Space up for days must level off
(target: under 2% growth over the second half). It stops by itself: after the last quarter, or when
`--max-minutes` runs out (then it reports the quarters it finished).

Endpoint and parameter names come from the server's `view_api`; what this script knows about the
app is the table below.

Measured on a shared 2-core machine (`nice -n 10`, the default command): RSS 447 -> 468 -> 477 MiB
after 1, 129 and 257 runs (+1.9% over the second half; a second run of the same command +2.9%),
descriptors 11-15, no leftover child process, the app's own folder flat at 0.3 MiB, Gradio's cache
+0.12 MiB per run (it keeps every served file for an hour). The RSS split showed the growth in
glibc's non-main arenas (14 -> 39 MiB), which `fifo.cpu.keep_freed_memory` now caps (its docstring
has the figures with bigger runs); the rest is Python objects inside Gradio (tracemalloc: +1.7 MiB
over 30 runs; the largest items pydantic schemas, streamed video segments, new File components and
per-session config copies).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# -- what this script knows about the app ----------------------------------------------------------
APP = {
    "launch": "import app; app.launch(server_name='127.0.0.1', server_port={port}, quiet=True)",
    "endpoint": "/generate",  # one short run per call
    "params": {  # by parameter name; names the endpoint lacks are left out (and reported)
        "length": 12,
        "length_unit": "frames",
        "partitions": 1,
        "lookahead": "off",
        "height": 64,
        "width": 64,
        "random_seed": False,
    },
    "varied": {  # per run, so runs are not identical
        "prompt": ["a red ball moving right", "a blue square moving left", "a green ball moving up"],
        "seed": range(10**6),
    },
}
MiB = 2**20


def free_port() -> int:
    """An unused TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def folder_bytes(path: Path, skip: Path | None = None) -> int:
    """Bytes of the files under `path`, not following links, leaving out the tree under `skip`."""
    total = 0
    for dirpath, dirnames, files in os.walk(path):
        if skip is not None:
            dirnames[:] = [d for d in dirnames if Path(dirpath, d) != skip]
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except OSError:  # deleted while walking
                pass
    return total


def proc_status(pid: int) -> dict[str, int]:
    """RSS (bytes), threads, open descriptors and direct children of a live process (Linux /proc)."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.split()
    children = 0
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if int((p / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    children += 1
            except (OSError, IndexError, ValueError):
                pass
    return {
        "rss": int(fields["VmRSS"][0]) * 1024,
        "threads": int(fields["Threads"][0]),
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
        "children": children,
    }


def memory_map(pid: int) -> dict[str, int]:
    """Resident bytes by kind of mapping: glibc's main heap, its other arenas, other anonymous memory, files."""
    kinds = {"heap": 0, "arenas": 0, "anon": 0, "files": 0}
    kind = None
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split(maxsplit=5)
        if "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
            start = int(head[0].split("-")[0], 16)
            name = head[5].strip() if len(head) > 5 else ""
            if name == "[heap]":
                kind = "heap"
            elif name == "":  # a non-main arena is a heap of 64 MiB aligned to its size (glibc's HEAP_MAX_SIZE)
                kind = "arenas" if start % (64 * MiB) == 0 else "anon"
            else:
                kind = "files" if name.startswith("/") else None
        elif line.startswith("Rss:") and kind is not None:
            kinds[kind] += int(line.split()[1]) * 1024
    return kinds


class Server:
    """The app in its own process, with its scratch folders under `work`."""

    def __init__(self, work: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.tmp, self.cache = work / "tmp", work / "tmp" / "gradio"
        self.cache.mkdir(parents=True)
        self.log = open(work / "server.log", "wb")
        child_env = {**os.environ, "TMPDIR": str(self.tmp), "GRADIO_TEMP_DIR": str(self.cache),
                     "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", **env}
        self.proc = subprocess.Popen([sys.executable, "-c", APP["launch"].format(port=self.port)], cwd=ROOT,
                                     env=child_env, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 300.0) -> None:
        """Until the page answers (model loading and example caching happen before)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the app exited with {self.proc.returncode}; see {self.log.name}")
            try:
                with urllib.request.urlopen(self.url + "config", timeout=5):
                    return
            except OSError:
                time.sleep(1.0)
        raise RuntimeError(f"the app did not answer within {timeout:.0f} s")

    def sample(self) -> dict[str, int]:
        """The server's process figures and its disk use."""
        s = proc_status(self.proc.pid)
        s.update(memory_map(self.proc.pid))
        s["app_disk"] = folder_bytes(self.tmp, skip=self.cache)
        s["gradio_disk"] = folder_bytes(self.cache)
        return s

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def run_args(names: list[str], i: int) -> dict:
    """The keyword arguments of run number `i`, restricted to the endpoint's parameter names."""
    kw = {k: v for k, v in APP["params"].items() if k in names}
    for k, values in APP["varied"].items():
        if k in names:
            kw[k] = values[i % len(values)]
    return kw


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=240, help="sequential runs in all (a quarter each quarter)")
    ap.add_argument("--clients", type=int, default=4, help="concurrent fresh clients once per quarter")
    ap.add_argument("--max-minutes", type=float, default=45.0, help="stop after the quarter running at this time")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="extra environment for the server")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="override one run parameter of the table (an integer where it parses as one)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (server log, files)")
    args = ap.parse_args()
    if args.runs < 4 or args.clients < 0:
        ap.error(f"--runs must be at least 4 (got {args.runs}) and --clients at least 0 (got {args.clients})")
    env = dict(e.split("=", 1) for e in args.env)
    for item in args.set:
        name, _, value = item.partition("=")
        APP["params"][name] = int(value) if value.lstrip("-").isdigit() else value

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from gradio_client import Client

    work = Path(tempfile.mkdtemp(prefix="fifo-soak-"))
    server = Server(work, env)
    deadline = time.monotonic() + 60 * args.max_minutes
    rows: list[tuple[str, int, dict, float]] = []
    errors: list[str] = []
    times: list[float] = []
    try:
        server.wait_ready()
        client = Client(server.url, verbose=False, download_files=False)
        api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
        if APP["endpoint"] not in api:
            raise SystemExit(f"the app has no endpoint {APP['endpoint']}; it has {sorted(api)}")
        names = [p["parameter_name"] for p in api[APP["endpoint"]]["parameters"]]
        missing = sorted(set(APP["params"]) - set(names))
        if missing:
            print(f"note: {APP['endpoint']} has no parameter(s) {missing}; left out", flush=True)

        done = 0

        def one(c: Client, i: int) -> None:
            t0 = time.monotonic()
            try:
                c.predict(**run_args(names, i), api_name=APP["endpoint"])
                times.append(time.monotonic() - t0)
            except Exception as e:  # noqa: BLE001  (counted and shown, the soak goes on)
                errors.append(f"run {i}: {type(e).__name__}: {str(e)[:200]}")

        one(client, 0)
        done = 1
        rows.append(("after 1 run", done, server.sample(), time.monotonic()))
        per_quarter = args.runs // 4
        for q in range(1, 5):
            for _ in range(per_quarter):
                one(client, done)
                done += 1
            crowd = [Client(server.url, verbose=False, download_files=False) for _ in range(args.clients)]
            threads = [threading.Thread(target=one, args=(c, done + k)) for k, c in enumerate(crowd)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            for c in crowd:
                c.close()
            done += args.clients
            rows.append((f"quarter {q}", done, server.sample(), time.monotonic()))
            print(f"quarter {q}: {done} runs, RSS {rows[-1][2]['rss'] / MiB:.0f} MiB", flush=True)
            if time.monotonic() > deadline and q < 4:
                print(f"stopping: --max-minutes {args.max_minutes:g} reached", flush=True)
                break
        client.close()
    finally:
        server.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    print()
    print(f"### Soak: {APP['endpoint']} {APP['params']} (toy), {args.runs // 4} sequential runs + "
          f"{args.clients} concurrent clients per quarter{'; server env ' + ' '.join(args.env) if args.env else ''}")
    print()
    print("| point | runs | server RSS (MiB) | of it: main heap / other arenas / other anon / files | open fds | "
          "threads | children | app temp (MiB) | Gradio cache (MiB) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, n, s, _ in rows:
        parts = " / ".join(f"{s[k] / MiB:.0f}" for k in ("heap", "arenas", "anon", "files"))
        print(f"| {name} | {n} | {s['rss'] / MiB:.1f} | {parts} | {s['fds']} | {s['threads']} | {s['children']} | "
              f"{s['app_disk'] / MiB:.2f} | {s['gradio_disk'] / MiB:.2f} |")
    print()
    if times:
        print(f"run time: median {statistics.median(times):.2f} s, max {max(times):.2f} s over {len(times)} runs; "
              f"{len(errors)} failed")
    for e in errors[:10]:
        print("  " + e)
    if len(rows) == 5:
        half, end = rows[2], rows[4]
        growth = (end[2]["rss"] - half[2]["rss"]) / half[2]["rss"]
        per100 = (end[2]["rss"] - half[2]["rss"]) / MiB / ((end[1] - half[1]) / 100)
        print(f"RSS growth over the second half: {100 * growth:+.1f}% ({per100:+.1f} MiB per 100 runs); "
              f"target under 2%: {'met' if growth < 0.02 else 'NOT met'}")
        print(f"Gradio cache growth over the second half: {(end[2]['gradio_disk'] - half[2]['gradio_disk']) / MiB:+.2f} MiB; "
              f"app temp: {(end[2]['app_disk'] - half[2]['app_disk']) / MiB:+.2f} MiB")
    else:
        print("fewer than 4 quarters finished: no verdict")


if __name__ == "__main__":
    main()
