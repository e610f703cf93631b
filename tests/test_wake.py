"""Waking a sleeping target: magic packets while requests wait, `foreman wake`, the 503 after.

Packets go to a UDP socket on 127.0.0.1 that the test reads, never to a
broadcast or LAN address; "target down" is the stand-in stopped (a closed port).
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time

import pytest

from foreman import wake
from foreman.wake import Waker, magic_packet
from tests.helpers import ROOT, subprocess_env, until

MAC = "a4:83:e7:12:34:56"
PACKET = b"\xff" * 6 + bytes.fromhex("a483e7123456") * 16


class PacketCatcher:
    """A UDP socket on loopback that notes each datagram and when it came."""

    def __init__(self, io_loop) -> None:
        self._io_loop = io_loop
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self.packets: list[tuple[float, bytes]] = []
        io_loop.add_handler(self.sock, self._read, io_loop.READ)

    def _read(self, fd, events) -> None:
        while True:
            try:
                data = self.sock.recv(2048)
            except BlockingIOError:
                return
            self.packets.append((time.monotonic(), data))

    def gaps(self) -> list[float]:
        times = [t for t, _ in self.packets]
        return [b - a for a, b in zip(times, times[1:])]

    def close(self) -> None:
        self._io_loop.remove_handler(self.sock)
        self.sock.close()


@pytest.fixture
def catcher(io_loop):
    caught = PacketCatcher(io_loop)
    yield caught
    caught.close()


def chat_body() -> dict:
    return {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}], "stream": False}


def metric(text: str, name: str) -> float:
    return next(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


def test_magic_packet_is_six_ff_then_the_address_sixteen_times() -> None:
    assert magic_packet(MAC) == PACKET
    assert magic_packet("A4-83-E7-12-34-56") == PACKET
    assert len(PACKET) == 102


async def test_a_waiting_request_wakes_the_target_until_it_answers(start_foreman, stub, catcher, caplog) -> None:
    caplog.set_level("INFO", logger="foreman.wake")
    front = start_foreman(
        FOREMAN_WAKE_MAC=MAC, FOREMAN_WAKE_ADDRESS=catcher.address, FOREMAN_QUEUE_TIMEOUT="1m"
    )
    await front.ready()
    port = stub.port
    await stub.stop()  # the Mac is asleep: nothing listens
    asked = time.monotonic()
    pending = asyncio.ensure_future(front.fetch("/api/chat", method="POST", body=chat_body()))

    await until(lambda: catcher.packets, timeout=5)
    first_at, first = catcher.packets[0]
    assert first == PACKET
    assert first_at - asked < 1.0, "the first packet goes at once"
    # Again while the request waits (Wi-Fi often needs several), never faster than 1/s.
    await until(lambda: len(catcher.packets) >= 2, timeout=wake.REPEAT + 5)
    assert all(data == PACKET for _, data in catcher.packets)
    assert not pending.done()

    stub.listen(port)  # awake
    response = await asyncio.wait_for(pending, 30)
    assert response.code == 200, response.body
    waker = front.foreman.waker
    assert waker is not None and not waker.waking
    stopped = len(catcher.packets)
    # Nothing after the target answered (a tick more than the repeat).
    await asyncio.sleep(wake.REPEAT + 0.5)
    assert len(catcher.packets) == stopped
    assert min(catcher.gaps(), default=1.0) >= 0.9

    # The first packet of the outage is logged at info, the rest are not.
    infos = [r for r in caplog.records if r.name == "foreman.wake" and r.levelname == "INFO"]
    assert len(infos) == 1 and MAC in infos[0].getMessage() and catcher.address in infos[0].getMessage()
    scrape = (await front.fetch("/metrics")).body.decode()
    assert metric(scrape, "foreman_wake_packets_total") == stopped


async def test_no_packets_while_the_target_answers(start_foreman, stub, catcher) -> None:
    front = start_foreman(FOREMAN_WAKE_MAC=MAC, FOREMAN_WAKE_ADDRESS=catcher.address)
    await front.ready()
    response = await front.fetch("/api/chat", method="POST", body=chat_body())
    assert response.code == 200
    assert catcher.packets == []
    assert front.foreman.waker is not None and not front.foreman.waker.waking


async def test_waited_too_long_for_a_target_asleep_is_503_saying_packets_were_sent(
    start_foreman, stub, catcher
) -> None:
    front = start_foreman(
        FOREMAN_WAKE_MAC=MAC, FOREMAN_WAKE_ADDRESS=catcher.address, FOREMAN_QUEUE_TIMEOUT="1500ms"
    )
    await front.ready()
    await stub.stop()
    response = await front.fetch("/api/chat", method="POST", body=chat_body())
    assert response.code == 503
    assert int(response.headers["Retry-After"]) >= 1
    error = json.loads(response.body)["error"]
    assert "gave up after waiting 1.5s for the target, which is unreachable" in error
    assert "Connection refused" in error
    sent = len(catcher.packets)
    assert sent >= 1
    expected = "1 wake packet was" if sent == 1 else f"{sent} wake packets were"
    assert f"{expected} sent to {MAC} via {catcher.address}" in error


async def test_waited_too_long_without_waking_says_none_was_sent(start_foreman, stub) -> None:
    front = start_foreman(FOREMAN_QUEUE_TIMEOUT="1s")
    await front.ready()
    await stub.stop()
    response = await front.fetch("/api/chat", method="POST", body=chat_body())
    assert response.code == 503
    error = json.loads(response.body)["error"]
    assert "which is unreachable" in error
    assert error.endswith("no wake packet was sent (FOREMAN_WAKE_MAC is not set)")


async def test_a_waker_started_again_at_once_keeps_a_second_between_packets(io_loop, catcher) -> None:
    waker = Waker(MAC, ("127.0.0.1", catcher.port))
    try:
        waker.start()
        await until(lambda: len(catcher.packets) == 1, timeout=5)
        # A pause that ends and begins again at once (the queue flapping) must not flood.
        waker.stop()
        waker.start()
        await until(lambda: len(catcher.packets) == 2, timeout=5)
        assert catcher.gaps()[0] >= 0.9
        assert waker.sent == 2
    finally:
        waker.close()


async def test_a_packet_that_cannot_go_out_is_skipped_and_logged_once(io_loop, caplog) -> None:
    attempts = []
    # The kernel refuses a datagram to port 0 at once (EINVAL).
    waker = Waker(MAC, ("127.0.0.1", 0), repeat=1.0, needed=lambda: attempts.append(1) or True)
    try:
        waker.start()
        await until(lambda: len(attempts) >= 2, timeout=5)
        warnings = [r for r in caplog.records if "could not send a wake packet" in r.getMessage()]
        assert len(warnings) == 1 and "127.0.0.1:0" in warnings[0].getMessage()
        assert waker.sent == 0 and waker.summary().startswith("no wake packet could be sent")
    finally:
        waker.close()


# --- `foreman wake` ----------------------------------------------------------------


def run_wake(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "foreman", "wake", *args],
        capture_output=True, text=True, timeout=60, cwd=ROOT, env={**subprocess_env(), **env},
    )


async def test_wake_command_sends_one_packet_and_says_where(io_loop, catcher) -> None:
    done = await asyncio.get_running_loop().run_in_executor(
        None, lambda: run_wake(FOREMAN_WAKE_MAC="A4-83-E7-12-34-56", FOREMAN_WAKE_ADDRESS=catcher.address)
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"sent a wake packet for {MAC} to {catcher.address} (UDP)"
    await until(lambda: catcher.packets, timeout=5)
    assert [data for _, data in catcher.packets] == [PACKET]


async def test_wake_command_flags_win_over_the_environment(io_loop, catcher) -> None:
    done = await asyncio.get_running_loop().run_in_executor(
        None,
        lambda: run_wake(
            "--wake-mac", MAC, "--wake-address", catcher.address,
            FOREMAN_WAKE_MAC="00:11:22:33:44:55", FOREMAN_WAKE_ADDRESS="127.0.0.1:1",
        ),
    )
    assert done.returncode == 0, done.stderr
    await until(lambda: catcher.packets, timeout=5)
    assert catcher.packets[0][1] == PACKET


@pytest.mark.parametrize(
    "env, args, names",
    [
        ({}, (), "FOREMAN_WAKE_MAC is not set"),
        ({"FOREMAN_WAKE_MAC": "a4:83:e7:12:34"}, (), "FOREMAN_WAKE_MAC='a4:83:e7:12:34'"),
        ({"FOREMAN_WAKE_MAC": MAC, "FOREMAN_WAKE_ADDRESS": "mac.local:9"}, (), "FOREMAN_WAKE_ADDRESS="),
        ({}, ("--wake-mac", "nope"), "--wake-mac (FOREMAN_WAKE_MAC)='nope'"),
        ({}, ("--no-such-flag",), "--no-such-flag"),
    ],
)
def test_wake_command_bad_values_exit_2_with_one_line(env, args, names) -> None:
    done = run_wake(*args, **env)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert names in lines[0]
    assert done.stdout == ""


def test_help_lists_the_wake_command() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "foreman", "--help"],
        capture_output=True, text=True, timeout=60, cwd=ROOT, env=subprocess_env(),
    )
    assert "wake    send one Wake-on-LAN packet" in done.stdout
    assert "--wake-mac MAC" in done.stdout and "--wake-address IP:PORT" in done.stdout
