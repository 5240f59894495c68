"""``run.py --profile DIR``: py-spy the workers (job children included), the coordinator and the
client during one executor_map (or client_submit) run, and print where the time goes.

py-spy writes collapsed stacks (``--format raw``) to ``DIR/<name>.txt``;
``summarize_collapsed`` prints the top self and inclusive frames of each, and
the CPU seconds of each process during the run (psutil) come first.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time

from stack import Stack
from results import fmt_run

#: py-spy samples per second.
SAMPLE_RATE_HZ = 250
#: How long py-spy gets to write its file after SIGINT.
PYSPY_FLUSH_TIMEOUT_S = 30


def summarize_collapsed(path: str, top: int) -> str:
    """Top self and inclusive frames from a py-spy --format raw (collapsed stacks) file."""
    self_t: dict[str, int] = {}
    incl: dict[str, int] = {}
    per_proc: dict[str, int] = {}
    total = 0
    try:
        with open(path) as f:
            for line in f:
                stack, _, count = line.rstrip("\n").rpartition(" ")
                if not stack:
                    continue
                c = int(count)
                procs = [fr for fr in stack.split(";") if fr.startswith("process ")]
                if procs:  # the innermost process: worker main or one of its job children
                    cmd = procs[-1].split(":", 1)[-1].strip('"').split()
                    label = " ".join(w for w in cmd[1:3])
                    per_proc[label] = per_proc.get(label, 0) + c
                frames = [fr for fr in stack.split(";") if not fr.startswith("process ")
                          and not fr.startswith("thread ")]
                if not frames:
                    continue
                total += c
                self_t[frames[-1]] = self_t.get(frames[-1], 0) + c
                for fr in set(frames):
                    incl[fr] = incl.get(fr, 0) + c
    except OSError as e:
        return f"(no profile: {e})"
    lines = [f"{total} samples"]
    if len(per_proc) > 1:
        lines.append("  by process: " + ", ".join(
            f"{k} {100 * v / max(total, 1):.0f}%" for k, v in sorted(per_proc.items(),
                                                                  key=lambda kv: -kv[1])))
    lines.append("  top self:")
    for fr, c in sorted(self_t.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"    {100 * c / max(total, 1):5.1f}%  {fr}")
    lines.append("  top inclusive (cwredis/redis/cloudpickle frames):")
    keep = [kv for kv in incl.items() if any(s in kv[0] for s in ("cwredis", "redis", "cloudpickle",
                                                                  "jobs.py", "benchmarks/"))]
    for fr, c in sorted(keep, key=lambda kv: -kv[1])[:top]:
        lines.append(f"    {100 * c / max(total, 1):5.1f}%  {fr}")
    return "\n".join(lines)


def stack_cpu_s(st: Stack) -> dict[str, float]:
    """CPU seconds (user+sys) so far of each stack process, job children included."""
    import psutil

    out = {}
    for name, pid in st.role_pids().items():
        try:
            pr = psutil.Process(pid)
            total = 0.0
            for q in [pr] + pr.children(recursive=True):
                try:
                    t = q.cpu_times()
                    total += t.user + t.system
                except psutil.Error:
                    pass
            out[name] = total
        except psutil.Error:
            pass
    return out


def profile(opts) -> None:
    pyspy = shutil.which("py-spy", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    if not pyspy:
        raise SystemExit("py-spy not found: pip install py-spy")
    outdir = os.path.abspath(opts.profile)
    os.makedirs(outdir, exist_ok=True)
    n = 2_000 if opts.quick else 20_000
    with Stack(opts, workers=(opts.workers, opts.concurrency)) as st:
        time.sleep(2.0)  # let the workers' job children finish importing: profile steady state

        def spy(name: str, pid: int, *extra: str):
            path = os.path.join(outdir, f"{name}.txt")
            argv = [pyspy, "record", "--pid", str(pid), "--format", "raw", "--nolineno",
                    "--rate", str(SAMPLE_RATE_HZ), "-o", path, *extra] + (["--gil"] if opts.gil else [])
            return name, path, st.procs.run(argv, name=f"py-spy-{name}")

        spies = [spy(w.name, w.pid, "--subprocesses") for w in st.workers]
        spies.append(spy("coordinator", st.role_pids()["coordinator"]))

        def attach_client():
            for _ in range(200):
                p = st.last_client
                if p is not None and p.alive():
                    spies.append(spy("client", p.pid))
                    return
                time.sleep(0.01)

        th = threading.Thread(target=attach_client)
        th.start()
        cpu0 = stack_cpu_s(st)
        if opts.profile_role == "client_submit":
            res = st.client("client_submit", {"n": 5_000, "warmup": 200, "cpu": True}, timeout=600)
        elif opts.profile_role in ("large_args", "large_results"):
            res = st.client(opts.profile_role, {"n": 200, "size": 1 << 20, "warmup": 4, "cpu": True}, timeout=600)
        else:
            res = st.client("executor_map", {"n": n, "warmup": 200, "cpu": True}, timeout=600)
        cpu1 = stack_cpu_s(st)
        th.join()
        print("CPU seconds during the run (incl. warm-up; py-spy adds some overhead): " + ", ".join(
            f"{k} {cpu1[k] - cpu0.get(k, 0.0):.2f}" for k in cpu1)
            + f", client (whole process) {res.get('client_cpu_s', float('nan')):.2f}")
        print(f"profiled {opts.profile_role}: {fmt_run(res)}")
        for name, path, sp in spies:
            if sp.alive():  # the client's py-spy ends with the client; the others on SIGINT
                sp.signal(signal.SIGINT)
            try:
                sp.wait(PYSPY_FLUSH_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                sp.stop()
            print(f"\n== {name} ({path})\n{summarize_collapsed(path, opts.top)}")
