#!/usr/bin/env python3
"""`just run-pg`: the Acme scenario with two hosts on one PostgreSQL.

Starts a PostgreSQL 15 of its own (initdb and pg_ctl, on a free loopback
port, under target/run-pg/), then two `concord serve` hosts, each from its
own folder (target/run-pg/host-a and host-b: its own config, cache and
server file) and both on the same database. Sales runs on host A, Support
and Product on host B, so the reference race is a race between hosts:
Sales reads Acme on A and pauses before sending the upsell; Support marks
Acme at_risk on B; Sales goes on, and the database refuses its stale
action. Then it prints the one audit, verified, and stops everything.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORK = os.path.join(ROOT, "target", "run-pg")
CONCORD = os.path.join(ROOT, "target", "debug", "concord")
HOST_OF = {"sales": "a", "support": "b", "product": "b"}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def as_postgres(args):
    # PostgreSQL refuses to run as root.
    return ["runuser", "-u", "postgres", "--"] + args if os.geteuid() == 0 else args


def run(args, **kw):
    return subprocess.run(args, check=True, **kw)


def start_postgres():
    pg = os.path.join(WORK, "pg")
    os.makedirs(pg)
    if os.geteuid() == 0:
        shutil.chown(pg, "postgres")
    port = free_port()
    data = os.path.join(pg, "data")
    for tool in ("initdb", "pg_ctl", "psql"):
        if shutil.which(tool) is None:
            sys.exit(f"run-pg: `{tool}` is not on the PATH: install PostgreSQL 15 (Debian: apt-get install postgresql)")
    run(as_postgres(["initdb", "-D", data, "-A", "trust", "-U", "concord", "-E", "UTF8"]), stdout=subprocess.DEVNULL)
    run(as_postgres(["pg_ctl", "-D", data, "-l", os.path.join(pg, "log"), "-w",
                     "-o", f"-p {port} -k {pg} -c listen_addresses=127.0.0.1", "start"]), stdout=subprocess.DEVNULL)
    run(["psql", "-q", "-h", "127.0.0.1", "-p", str(port), "-U", "concord", "-d", "postgres",
         "-c", "CREATE DATABASE concord"])
    return data, f"postgres://concord@127.0.0.1:{port}/concord"


def host_folder(name):
    folder = os.path.join(WORK, f"host-{name}")
    os.makedirs(folder)
    with open(os.path.join(ROOT, "concord.toml")) as f:
        text = f.read()
    text = text.replace("[kb]\n", '[kb]\nbackend = "postgres"\n', 1)
    text = text.replace('dir = "agents"', f'dir = "{os.path.join(ROOT, "agents")}"', 1)
    # Breakpoints let the script pause Sales exactly before its action.
    text += "\n[server]\nbreakpoints = true\n"
    with open(os.path.join(folder, "concord.toml"), "w") as f:
        f.write(text)
    return os.path.join(folder, "concord.toml")


def call(base, method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method,
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read() or b"null")


def wait_ready(base, proc, log):
    for _ in range(600):
        if proc.poll() is not None:
            sys.exit(f"run-pg: a host stopped at start:\n{open(log).read()}")
        try:
            urllib.request.urlopen(base + "/readyz", timeout=1)
            return
        except Exception:
            time.sleep(0.1)
    sys.exit(f"run-pg: a host did not get ready in 60 s:\n{open(log).read()}")


def show(host, answer):
    for a in [answer] + [x for x in answer.get("invocations", []) if x.get("invocation") != answer["invocation"]]:
        print(f"  host {host}  {a['agent']:<8} invocation {a['invocation']:<4} {a.get('outcome') or a.get('status')}: {a.get('report') or ''}")


def main():
    shutil.rmtree(WORK, ignore_errors=True)
    os.makedirs(WORK)
    data, url = start_postgres()
    env = dict(os.environ, CONCORD_PG_URL=url)
    hosts, procs = {}, []
    try:
        configs = {}
        for name in ("a", "b"):
            configs[name] = host_folder(name)
            port = free_port()
            log = os.path.join(WORK, f"host-{name}.log")
            proc = subprocess.Popen([CONCORD, "-c", configs[name], "serve", "--listen", f"127.0.0.1:{port}"],
                                    env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)
            procs.append(proc)
            hosts[name] = f"http://127.0.0.1:{port}"
            wait_ready(hosts[name], proc, log)
        print(f"== two hosts on one PostgreSQL ({url}): A at {hosts['a']}, B at {hosts['b']} ==")
        paused = {}
        with open(os.path.join(ROOT, "scenarios", "acme.jsonl")) as f:
            for line in f:
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                step = json.loads(line)
                if "note" in step:
                    print(f"-- {step['note']}")
                if "resume" in step:
                    host, invocation = paused.pop(step["resume"])
                    show(host, call(hosts[host], "POST", f"/v1/invocations/{invocation}/resume"))
                    continue
                host = HOST_OF[step["agent"]]
                body = {"kind": step["kind"], "entity": step.get("entity"), "body": step.get("body", {})}
                if "pause_before" in step:
                    body["pause_before"] = step["pause_before"]
                    answer = call(hosts[host], "POST", f"/v1/invoke/{step['agent']}?wait=false", body)
                    paused[step["id"]] = (host, answer["invocation"])
                    print(f"  host {host}  {step['agent']:<8} invocation {answer['invocation']:<4} paused before {step['pause_before']}")
                else:
                    show(host, call(hosts[host], "POST", f"/v1/invoke/{step['agent']}", body))
        for title, args in [
            ("the one audit trail, from both hosts (concord audit)", ["audit"]),
            ("its hash chain, verified (concord audit verify)", ["audit", "verify"]),
            ("Acme's history (concord history customer/acme)", ["history", "customer/acme"]),
            ("the current state (concord get customer/acme)", ["get", "customer/acme"]),
            ("who got in whose way (concord conflicts)", ["conflicts"]),
        ]:
            print(f"\n== {title} ==", flush=True)
            run([CONCORD, "-c", configs["a"]] + args, env=env)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        subprocess.run(as_postgres(["pg_ctl", "-D", data, "-m", "fast", "-w", "stop"]), stdout=subprocess.DEVNULL)


if __name__ == "__main__":
    main()
