#!/usr/bin/env python3
"""Run the workspace's tests side by side, one process per test.

    scripts/run-tests.py [-j N] [--profile P] [--ignored] [--filter SUBSTR]
                         [--package PKG] [--binary NAME] [--times FILE]

Builds the tests (`cargo test --no-run`, the same build `cargo test` makes),
lists every test of every test binary, and runs each in a process of its own
(`<binary> --exact <name>`, in its package's folder, as cargo runs it), at
most N at once, the longest first (by the times of the last run, kept in
target/test-times.json). The e2e tests mostly wait on etcd and timers, so N
may well exceed the cores; a test whose first line of doc says
"runs alone" is run with nothing beside it. Prints every failure's output,
the counts, and the slowest ten tests; exits 1 if any test failed.

Needs nothing but Python 3 and cargo. Tests take their machine-wide names
(loopback ranges, namespaces) from leases (tests/src/lease.rs), so two runs
on one machine do not collide either.
"""

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMES = os.path.join(ROOT, "target", "test-times.json")
# The times of a full run, committed: a clean clone schedules by them.
KNOWN_TIMES = os.path.join(ROOT, "scripts", "test-times.json")


def build(profile, packages):
    cmd = ["cargo", "test", "--locked", "--no-run", "--message-format=json-render-diagnostics"]
    cmd += ["--workspace"] if not packages else sum((["-p", p] for p in packages), [])
    if profile != "dev":
        cmd += ["--profile", profile]
    out = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, check=True, text=True).stdout
    binaries = []
    for line in out.splitlines():
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if msg.get("reason") != "compiler-artifact" or not msg.get("executable"):
            continue
        if not msg.get("profile", {}).get("test"):
            continue
        kind = msg["target"]["kind"][0]
        # "path+file:///work/x/gossip#0.1.0", or "...#etcd-manager@0.1.0"
        # when the package's name is not its folder's.
        where, _, fragment = msg["package_id"].partition("#")
        package = fragment.split("@")[0] if "@" in fragment else where.rstrip("/").rsplit("/", 1)[-1]
        binaries.append({
            "exe": msg["executable"],
            "name": f'{package}::{kind}::{msg["target"]["name"]}',
            "dir": os.path.dirname(msg["manifest_path"]),
        })
    return binaries


def list_tests(binary, ignored):
    args = [binary["exe"], "--list", "--format", "terse"]
    if ignored:
        args.append("--ignored")
    out = subprocess.run(args, cwd=binary["dir"], stdout=subprocess.PIPE, check=True, text=True).stdout
    return [l[: -len(": test")] for l in out.splitlines() if l.endswith(": test")]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-j", type=int, default=int(os.environ.get("TEST_JOBS", "6")))
    ap.add_argument("--profile", default="dev")
    ap.add_argument("--ignored", action="store_true", help="run the ignored tests instead")
    ap.add_argument("--filter", action="append", default=[], help="only tests whose full name holds this")
    ap.add_argument("--skip", action="append", default=[], help="leave out tests whose full name holds this")
    ap.add_argument("--keep", action="append", default=[], help="but keep those whose full name holds this")
    ap.add_argument("--log", help="also write the output to this file")
    ap.add_argument("--package", action="append", default=[])
    ap.add_argument("--binary", action="append", default=[], help="only binaries whose name holds this")
    ap.add_argument("--alone", action="append", default=[],
                    help="tests (by full name substring) that run with nothing beside them")
    ap.add_argument("--with-ignored", action="append", default=[],
                    help="also run the ignored tests whose full name holds this")
    ap.add_argument("--also", action="append", default=[], metavar="NAME=COMMAND",
                    help="also run this shell command as a job of the pool (its time counts as a test's)")
    args = ap.parse_args()

    if args.log:
        os.makedirs(os.path.dirname(os.path.abspath(args.log)), exist_ok=True)
        log = open(args.log, "w")

        class Tee:
            def write(self, text):
                sys.__stdout__.write(text)
                log.write(text)
                log.flush()

            def flush(self):
                sys.__stdout__.flush()

        sys.stdout = Tee()
    started = time.monotonic()
    binaries = build(args.profile, args.package)
    if args.binary:
        binaries = [b for b in binaries if any(n in b["name"] for n in args.binary)]
    tests = []
    for b in binaries:
        ignored = set(list_tests(b, True))
        for t in list_tests(b, args.ignored):
            full = f'{b["name"]}::{t}'
            if args.filter and not any(f in full for f in args.filter):
                continue
            if any(s in full for s in args.skip) and not any(k in full for k in args.keep):
                continue
            tests.append((b, t, full, args.ignored))
        for t in ignored:
            full = f'{b["name"]}::{t}'
            if not args.ignored and any(f in full for f in args.with_ignored):
                tests.append((b, t, full, True))
    for also in args.also:
        name, _, command = also.partition("=")
        tests.append((None, command, name, False))
    built = time.monotonic() - started

    known = {}
    for path in (KNOWN_TIMES, TIMES):
        try:
            with open(path) as f:
                known.update(json.load(f))
        except (OSError, ValueError):
            pass
    # Longest first: a long test started last would set the run's length.
    # Never timed: a command or an ignored (searching) test is taken for a
    # long one, any other test for half a minute.
    def guess(x):
        b, _, full, ignored_test = x
        return known.get(full, 600.0 if b is None else 200.0 if ignored_test else 30.0)
    tests.sort(key=lambda x: -guess(x))
    alone = [x for x in tests if any(a in x[2] for a in args.alone)]
    side_by_side = [x for x in tests if x not in alone]

    lock = threading.Lock()
    results = {}
    skipped = []
    env = dict(os.environ, RUST_BACKTRACE=os.environ.get("RUST_BACKTRACE", "1"))

    def run(item):
        b, t, full, ignored_test = item
        t0 = time.monotonic()
        if b is None:
            p = subprocess.run(["bash", "-c", t], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
        else:
            p = subprocess.run([b["exe"], "--exact", t, "--test-threads=1"] + (["--ignored"] if ignored_test else []),
                               cwd=b["dir"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        took = time.monotonic() - t0
        ok = p.returncode == 0
        text = p.stdout.decode(errors="replace")
        ignored = ok and "0 passed; 0 failed; 1 ignored" in text
        with lock:
            if ignored:
                skipped.append(full)
            else:
                results[full] = (ok, took, text)
            # libtest's own line, so whatever reads cargo's output counts
            # this test; the time follows it.
            verdict = "ignored" if ignored else "ok" if ok else "FAILED"
            print(f"test {full} ... {verdict}  [{took:.1f} s]", flush=True)

    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.j)) as pool:
        list(pool.map(run, side_by_side))
    for item in alone:
        run(item)

    failed = sorted(n for n, (ok, _, _) in results.items() if not ok)
    for n in failed:
        print(f"\n===== {n} =====\n{results[n][2]}")
    for n, (ok, took, _) in results.items():
        if ok:
            known[n] = round(took, 1)
    os.makedirs(os.path.dirname(TIMES), exist_ok=True)
    with open(TIMES, "w") as f:
        json.dump(known, f, indent=0, sort_keys=True)
    wall = time.monotonic() - started
    # One libtest summary per binary (and one for the pool's commands), in
    # cargo's words: "test result: ok. N passed; ...".
    by_binary = {}
    for b, _, full, _ in tests:
        group = b["name"] if b is not None else "commands"
        by_binary.setdefault(group, []).append(full)
    for group, names in by_binary.items():
        ran = [n for n in names if n in results]
        bad = [n for n in ran if not results[n][0]]
        ign = [n for n in names if n in skipped]
        took = sum(results[n][1] for n in ran)
        print(f"\n     Running {group}\nrunning {len(names)} tests\n"
              f"test result: {'FAILED' if bad else 'ok'}. {len(ran) - len(bad)} passed; {len(bad)} failed; "
              f"{len(ign)} ignored; 0 measured; 0 filtered out; finished in {took:.2f}s")
    print(f"\n{len(results) - len(failed)} passed, {len(failed)} failed, {len(skipped)} ignored, {len(results)} run "
          f"in {len(binaries)} binaries; build {built:.0f} s, run {wall - built:.0f} s with -j {args.j}")
    print("slowest ten:")
    for n, (ok, took, _) in sorted(results.items(), key=lambda x: -x[1][1])[:10]:
        print(f"  {took:7.1f} s  {n}")
    for n in failed:
        print(f"FAILED: {n}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
