"""foreman out of file descriptors: it pauses accepting instead of spinning.

A real foreman process runs with a low open-file limit; the test opens
connections until foreman cannot accept one more, then checks that the
process stays idle and quiet while it waits, that the connections it holds
are still served, and that it accepts again once descriptors are free.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys

from tests.test_process import DEADLINE, foreman_env, started

# Low enough to reach in a few dozen connections; foreman itself needs ~10.
FD_LIMIT = 64
OUT_OF_FDS = "Too many open files"
# Run foreman under the limit (soft and hard, so it cannot raise it back).
LIMITED = [
    sys.executable,
    "-c",
    "import resource, runpy, sys\n"
    f"resource.setrlimit(resource.RLIMIT_NOFILE, ({FD_LIMIT}, {FD_LIMIT}))\n"
    "sys.argv = ['foreman']\n"
    "runpy.run_module('foreman', run_name='__main__')\n",
]
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
# /healthz answers 503 until the first poll of the target is over: either is an answer.
SERVED = (200, 503)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process has used so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    # Fields 14 and 15 of proc(5), counted from the state (field 3).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def answer(reader: asyncio.StreamReader) -> int:
    """Read one HTTP answer; its status."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            await reader.readexactly(int(value))
    return status


async def healthz(
    port: int,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, asyncio.Task[int]]:
    """Connect and ask for /healthz; the answer is a task, as it may never come."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(HEALTHZ)
    return reader, writer, asyncio.ensure_future(answer(reader))


async def test_out_of_descriptors_pauses_accepting_and_keeps_serving(stub) -> None:
    async with started(LIMITED, foreman_env(stub.url)) as child:
        pid, port = child.process.pid, child.port
        assert port is not None
        kept_reader, kept_writer, first = await healthz(port)
        assert await asyncio.wait_for(first, DEADLINE) in SERVED

        # Connect until foreman says it cannot accept. (Linux fails accept()
        # with EMFILE once no descriptor is free, even with nothing pending, so
        # the line may come right after the last connection foreman could take.)
        out_of_fds = asyncio.ensure_future(child.wait_line(lambda line: OUT_OF_FDS in line))
        held: list[asyncio.StreamWriter] = [kept_writer]
        answers: list[asyncio.Task[int]] = []
        try:
            for _ in range(2 * FD_LIMIT):
                _, writer, answered = await healthz(port)
                held.append(writer)
                answers.append(answered)
                await asyncio.wait({answered, out_of_fds}, return_when=asyncio.FIRST_COMPLETED)
                if out_of_fds.done():
                    break
                assert answered.result() in SERVED
            assert out_of_fds.done(), "foreman never ran out of descriptors"
            await out_of_fds
            # Every descriptor is taken: this one waits in the listen backlog.
            _, writer, waiting = await healthz(port)
            held.append(writer)
            answers.append(waiting)

            # Out of descriptors, with connections waiting to be accepted:
            # foreman idles and logs a line a second at most, no traceback.
            lines_before, cpu_before = len(child.stderr), cpu_seconds(pid)
            await asyncio.sleep(2)
            cpu_used = cpu_seconds(pid) - cpu_before
            logged = child.stderr[lines_before:]
            assert cpu_used < 0.5, f"{cpu_used:.2f}s of CPU in 2s while out of descriptors"
            assert len(logged) <= 4, f"{len(logged)} lines in 2s: {logged[:5]}"
            assert not any("Traceback" in line for line in child.stderr), child.log
            assert not waiting.done(), child.log

            # The connections it has are still served.
            kept_writer.write(HEALTHZ)
            assert await asyncio.wait_for(answer(kept_reader), DEADLINE) in SERVED

            # Descriptors free again: the waiting connection and new ones are accepted.
            for writer in held[1:11]:
                writer.close()
            assert await asyncio.wait_for(waiting, DEADLINE) in SERVED
            _, writer, answered = await healthz(port)
            held.append(writer)
            answers.append(answered)
            assert await asyncio.wait_for(answered, DEADLINE) in SERVED
            assert not any("Traceback" in line for line in child.stderr), child.log
        finally:
            out_of_fds.cancel()
            for answered in answers:
                answered.cancel()
            for writer in held:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
