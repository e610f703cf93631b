"""The `foreman` command: serve (the default), stub, demo, wake."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from typing import NoReturn

from foreman import __version__, config, logs

COMMANDS = ("serve", "stub", "demo", "wake")

_EPILOG = """\
commands:
  serve   run foreman in front of FOREMAN_OLLAMA_URL (the default)
  stub    run the stand-in Ollama (deterministic; for trying clients without a real Ollama)
  demo    run the stand-in and foreman in front of it, and print a curl line to try
          (--targets 2: two stand-ins with different models, foreman routing between them)
  wake    send one Wake-on-LAN packet for FOREMAN_WAKE_MAC to FOREMAN_WAKE_ADDRESS
          (to check that the Ollama machine wakes for it)

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


def _run(coroutine: object) -> None:
    try:
        asyncio.run(coroutine)  # type: ignore[arg-type]
    except OSError as e:
        # Typically the listen address is taken: one clear line, no traceback.
        logging.getLogger("foreman").error("%s", e)
        raise SystemExit(1) from None

