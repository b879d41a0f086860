"""Multi-host start: every process meets the others before jax's runtime joins them.

jax.distributed.initialize aborts the whole process (SIGABRT, a C++ stack, exit 134) when the coordinator
never answers or a peer never comes, and crashes on some malformed addresses. So, with a coordinator address
given, the processes first meet over plain TCP on the coordinator's port, under `distributed_timeout`:
process 0 listens and waits until every other process has said hello; each other process connects (retrying
until process 0 listens), says hello and waits for process 0's go. Only then does each call
jax.distributed.initialize, which process 0's coordinator serves on the same port. Any process missing by
the deadline is a one-line RunError naming who did not come, on every process that waited.

Without an address (a detected cluster: SLURM, TPU pods) jax's own detection runs, with the same timeout.
"""

from __future__ import annotations

import socket
import time
from typing import Tuple

import jax

from dps_jax.experiment import RunError

HELLO = b"dps_jax hello "
GO = b"go\n"


def coordinator(address: str) -> Tuple[str, int]:
    """(host, port) of `host:port` (`[v6 address]:port`), or a RunError that shows the expected form."""
    host, sep, port = address.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    ok_host = bool(host) and len(host) <= 253 and all(c.isalnum() or c in "-._:" for c in host)
    if not sep or not ok_host or not port.isdigit() or not 0 < int(port) < 65536:
        raise RunError(f"coordinator_address {address[:80]!r} is not host:port (e.g. 10.0.0.1:1234, "
                       f"[::1]:1234) with a port in 1..65535")
    return host, int(port)


def _recv_line(conn: socket.socket, deadline: float, limit: int = 64) -> bytes:
    data = b""
    while not data.endswith(b"\n") and len(data) < limit:
        conn.settimeout(max(deadline - time.monotonic(), 0.01))
        chunk = conn.recv(limit - len(data))
        if not chunk:
            break
        data += chunk
    return data


def gather(host: str, port: int, num_processes: int, timeout: float) -> None:
    """Process 0: wait until processes 1..num_processes-1 have each said hello on host:port, then tell them
    to go; RunError naming the missing ones after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    peers, seen = [], set()
    # every interface, as jax's coordinator binds ([::]:port)
    dual = socket.has_dualstack_ipv6()
    try:
        server = socket.create_server(("", port), family=socket.AF_INET6 if dual else socket.AF_INET,
                                      dualstack_ipv6=dual, backlog=num_processes)
    except OSError as e:
        raise RunError(f"distributed: process 0 cannot listen on port {port} ({e.strerror or e}); is it taken?") from None
    with server:
        try:
            while len(seen) < num_processes - 1:
                left = deadline - time.monotonic()
                if left <= 0:
                    missing = sorted(set(range(1, num_processes)) - seen)
                    raise RunError(f"distributed: {len(seen) + 1} of {num_processes} processes came to {host}:{port} "
                                   f"within {timeout:g} s; missing process_id {', '.join(map(str, missing[:8]))}"
                                   f"{' ...' if len(missing) > 8 else ''} (raise distributed_timeout, or start them)")
                server.settimeout(left)
                try:
                    conn, _ = server.accept()
                except (socket.timeout, OSError):
                    continue
                try:
                    line = _recv_line(conn, min(deadline, time.monotonic() + 5))
                except OSError:
                    line = b""
                index = line[len(HELLO):].strip() if line.startswith(HELLO) else b""
                if index.isdigit() and 0 < int(index) < num_processes and int(index) not in seen:
                    seen.add(int(index))
                    peers.append(conn)
                else:
                    conn.close()            # a stray connection (a port scan, a second process 1)
            for conn in peers:
                conn.sendall(GO)
            for conn in peers:               # the peers close first: the port is free for the coordinator
                conn.settimeout(5)
                try:
                    conn.recv(1)
                except OSError:
                    pass
        finally:
            for conn in peers:
                conn.close()


def meet(host: str, port: int, index: int, timeout: float) -> None:
    """Process `index` > 0: say hello to process 0 at host:port (retrying until it listens) and wait for its
    go; RunError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    why = "no answer"
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=min(5.0, timeout)) as conn:
                conn.sendall(HELLO + str(index).encode() + b"\n")
                if _recv_line(conn, deadline) == GO:
                    return
                why = "process 0 closed the connection"
        except OSError as e:
            why = type(e).__name__
        time.sleep(0.2)
    raise RunError(f"distributed: process {index} found no process 0 at {host}:{port} within {timeout:g} s ({why}); "
                   f"start process 0 with the same coordinator_address, or raise distributed_timeout")


def initialize(cfg) -> None:
    """jax.distributed.initialize with the config's coordinator, process count and index (each from the
    cluster when unset), after the processes met (see the module docstring)."""
    address, n, index, timeout = cfg.coordinator_address, cfg.num_processes, cfg.process_id, cfg.distributed_timeout
    if n and index >= n:
        raise RunError(f"process_id {index} is not below num_processes {n}")
    if address:
        if not n or index < 0:
            raise RunError("with coordinator_address, set num_processes and process_id too")
        host, port = coordinator(address)
        if index == 0:
            gather(host, port, n, timeout)
        else:
            meet(host, port, index, timeout)
    try:
        jax.distributed.initialize(address or None, n or None, index if index >= 0 else None,
                                   initialization_timeout=int(timeout))
    except (ValueError, TypeError, RuntimeError) as e:
        raise RunError(f"distributed: {(str(e).splitlines() or [''])[0][:200]} (set coordinator_address, "
                       "num_processes and process_id outside a detected cluster)") from None
