"""The `foreman` command: serve (the default), stub, demo, wake, status."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import os
import shutil
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from typing import NoReturn

from foreman import __version__, config, logs

COMMANDS = ("serve", "stub", "demo", "wake", "status")

_EPILOG = """\
commands:
  serve   run foreman in front of FOREMAN_OLLAMA_URL (the default)
  stub    run the stand-in Ollama (deterministic; for trying clients without a real Ollama)
  demo    run the stand-in and foreman in front of it, and print a curl line to try
          (--targets 2: two stand-ins with different models, foreman routing between them)
  wake    send one Wake-on-LAN packet for FOREMAN_WAKE_MAC to FOREMAN_WAKE_ADDRESS
          (to check that the Ollama machine wakes for it)
  status  show what a running foreman is doing: its targets, clients, what runs now,
          the last requests (--url, --token, --watch, --json; see foreman status --help)

Every flag can also be given as its FOREMAN_* environment variable; a flag wins.
"""


def serve_parser(prog: str = "foreman") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="foreman: share one Ollama machine. An Ollama-compatible front "
        "with a model inventory, validation, auth and health.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"foreman {__version__}")
    config.add_arguments(parser)
    return parser


class _OneLineErrors(argparse.ArgumentParser):
    """A bad flag is one line on stderr and exit 2, as a bad setting of `serve` is."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message}\n")


def stub_parser() -> argparse.ArgumentParser:
    from foreman import stub

    parser = _OneLineErrors(
        prog="foreman stub",
        description=stub.DESCRIPTION,
        epilog=stub.routes_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    stub.add_stub_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    command = args.pop(0) if args and args[0] in COMMANDS else "serve"
    try:
        if command == "stub":
            _run_stub(args)
        elif command == "demo":
            _run_demo(args)
        elif command == "wake":
            _run_wake(args)
        elif command == "status":
            _run_status(args)
        else:
            _run_serve(args)
    except KeyboardInterrupt:
        pass
    except ImportError as e:
        # A dependency missing or of the wrong version (foreman.target checks
        # Tornado's internals it needs): one line, not a traceback.
        print(f"foreman: cannot start: {e}", file=sys.stderr)
        raise SystemExit(1) from None


def _load(
    parser: argparse.ArgumentParser, args: list[str], environ: dict[str, str] | None = None
) -> config.Config:
    return _settings(parser.parse_args(args), os.environ if environ is None else environ)


def _settings(namespace: argparse.Namespace, environ: Mapping[str, str]) -> config.Config:
    try:
        return config.load(environ, namespace)
    except config.ConfigError as e:
        print(f"foreman: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def _run_serve(args: list[str]) -> None:
    from foreman.server import serve

    parser = serve_parser()
    settings = _load(parser, args)
    logs.configure(settings.log_format, settings.log_level)
    namespace = parser.parse_args(args)
    _run(serve(settings, reload=lambda: config.load(os.environ, namespace)))


def _run_stub(args: list[str]) -> None:
    from foreman import stub

    namespace = stub_parser().parse_args(args)
    logs.configure("text", "info")
    _run(stub.stub_from_args(namespace))


def _run_demo(args: list[str]) -> None:
    from foreman.demo import MAX_TARGETS, run_demo

    parser = serve_parser("foreman demo")
    parser.description = (
        "Start the stand-in Ollama on a free loopback port and foreman in front of it "
        "(on 127.0.0.1:8080 unless --listen or FOREMAN_LISTEN says otherwise). "
        "With --targets 2, two stand-ins with different models (llama3.2 on both, "
        "qwen2.5:0.5b only on the first, hf.co/example/tiny-gguf:Q4_K_M only on the second) "
        "and foreman routing between them."
    )
    parser.add_argument(
        "--targets",
        type=int,
        choices=range(1, MAX_TARGETS + 1),
        default=1,
        metavar="N",
        help=f"how many stand-in Ollamas to run behind foreman, 1 to {MAX_TARGETS} (default 1)",
    )
    environ = dict(os.environ)
    environ.setdefault("FOREMAN_LISTEN", "127.0.0.1:8080")
    namespace = parser.parse_args(args)
    settings = _settings(namespace, environ)
    logs.configure(settings.log_format, settings.log_level)

    def with_targets(urls: str) -> config.Config:
        # The stand-ins replace whatever targets the environment or flags name.
        demo_environ = {k: v for k, v in environ.items() if k != "FOREMAN_TARGETS_FILE"}
        demo_environ["FOREMAN_OLLAMA_URL"] = urls
        demo_namespace = argparse.Namespace(**vars(namespace))
        demo_namespace.ollama_url = None
        if hasattr(demo_namespace, "targets_file"):
            demo_namespace.targets_file = None
        return _settings(demo_namespace, demo_environ)

    _run(run_demo(settings, targets=namespace.targets, with_targets=with_targets))


def _run_wake(args: list[str]) -> None:
    from foreman.wake import send_packet, shown_address

    parser = _OneLineErrors(
        prog="foreman wake",
        description="Send one Wake-on-LAN magic packet for the Ollama machine (FOREMAN_WAKE_MAC) "
        "to FOREMAN_WAKE_ADDRESS, as foreman does while requests wait for it asleep, "
        "and say where it went. Takes every setting serve takes; only those two matter.",
    )
    config.add_arguments(parser)
    settings = _load(parser, args)
    if settings.wake_mac is None:
        print(
            "foreman wake: FOREMAN_WAKE_MAC is not set; give the Ollama machine's Ethernet "
            "address, e.g. FOREMAN_WAKE_MAC=a4:83:e7:12:34:56 or --wake-mac a4:83:e7:12:34:56",
            file=sys.stderr,
        )
        raise SystemExit(2)
    where = shown_address(settings.wake_address)
    try:
        send_packet(settings.wake_mac, settings.wake_address)
    except OSError as e:
        print(f"foreman wake: could not send to {where}: {e.strerror or e}", file=sys.stderr)
        raise SystemExit(1) from None
    print(f"sent a wake packet for {settings.wake_mac} to {where} (UDP)")


def status_parser() -> argparse.ArgumentParser:
    from foreman.status import terminal

    parser = _OneLineErrors(
        prog="foreman status",
        description="Show what a running foreman is doing, from its status document "
        f"({terminal.STATUS_PATH}): its targets and what they hold in memory, the clients "
        "and how many of their requests wait, what runs now, and the last requests.",
        epilog=f"""\
environment:
  {terminal.URL_VARIABLE}    foreman's address when --url is not given
  {terminal.TOKEN_VARIABLE}  the bearer token when --token is not given

exit codes:
  0  shown (or --watch ended with Ctrl-C)
  1  foreman could not be reached, refused the token, or did not answer with
     its status document; one line on stderr says which
  2  a bad flag
""",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--url",
        metavar="URL",
        help=f"foreman's address, as clients use it (default: ${terminal.URL_VARIABLE}, "
        f"else {terminal.DEFAULT_URL})",
    )
    parser.add_argument(
        "--token",
        metavar="TOKEN",
        help=f"a bearer token foreman accepts, needed when it has tokens "
        f"(default: ${terminal.TOKEN_VARIABLE}); never shown",
    )
    parser.add_argument("--json", action="store_true", help="print the status document itself (JSON)")
    parser.add_argument("--watch", action="store_true", help="show it again every --interval until Ctrl-C")
    parser.add_argument(
        "--interval",
        type=_positive_seconds,
        default=2.0,
        metavar="SECONDS",
        help="how often --watch asks again (default 2)",
    )
    parser.add_argument(
        "--recent",
        type=_count,
        default=10,
        metavar="N",
        help="how many of the last finished requests to show (default 10; 0 for none)",
    )
    return parser


def _positive_seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not 0.1 <= seconds <= 86400:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds from 0.1 to 86400")
    return seconds


def _count(text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number from 0")
    return int(text)


# Home, then clear the screen: --watch redraws in place on a terminal.
_CLEAR = "\x1b[H\x1b[2J"


def _run_status(args: list[str]) -> None:
    from foreman.status import terminal

    parser = status_parser()
    namespace, unknown = parser.parse_known_args(args)
    if unknown:
        # argparse would quote them all, and a mistyped flag's value may be the token.
        flags = sorted({a.split("=", 1)[0] for a in unknown if a.startswith("-")})
        parser.error(f"unrecognized arguments: {' '.join(flags) or 'values'} (values not shown)")
    given = namespace.url or os.environ.get(terminal.URL_VARIABLE) or terminal.DEFAULT_URL
    try:
        url = terminal.base_url(given)
    except ValueError as e:
        # The default is sound: a bad address came from the flag or the variable.
        parser.error(f"{'--url' if namespace.url else terminal.URL_VARIABLE}: {e}")
    token = namespace.token if namespace.token is not None else os.environ.get(terminal.TOKEN_VARIABLE)
    if token and not (token.isascii() and token.isprintable() and " " not in token):
        parser.error("the token must be printable ASCII without spaces (it is not shown)")
    tty = sys.stdout.isatty()
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="replace")  # a name the terminal's encoding lacks

    def page_of(document: dict[str, object]) -> str:
        if namespace.json:
            # ASCII escapes: a control character in a name stays inert here too.
            return json.dumps(document, indent=2)
        # A terminal's lines are cut to its width; piped text is left whole.
        width = shutil.get_terminal_size((100, 24)).columns if tty else 0
        return terminal.render(document, width, url=url, recent=namespace.recent)

    if namespace.watch:
        # Ctrl-C ends the watch (exit 0) even where SIGINT came ignored.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        refreshes = 0
        while True:
            page = page_of(terminal.fetch_status(url, token or None))
            if namespace.watch and tty:
                page = _CLEAR + page
            elif refreshes:
                page = "\n" + page  # one refresh after another, a blank line between
            print(page, flush=True)
            refreshes += 1
            if not namespace.watch:
                return
            time.sleep(namespace.interval)
    except terminal.StatusUnavailable as e:
        print(f"foreman status: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, and keep Python's
        # exit-time flush of stdout from failing again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _run(coroutine: object) -> None:
    try:
        asyncio.run(coroutine)  # type: ignore[arg-type]
    except OSError as e:
        # Typically the listen address is taken: one clear line, no traceback.
        logging.getLogger("foreman").error("%s", e)
        raise SystemExit(1) from None

