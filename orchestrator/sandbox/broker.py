"""The sandbox's embedded MQTT broker: amqtt on 127.0.0.1, for machines without mosquitto.

Run as ``python -m orchestrator.sandbox.broker --port N``; it listens on 127.0.0.1:N only,
accepts anonymous clients (the sandbox is loopback-only and throwaway), and on SIGTERM or
SIGINT closes every session and exits 0. The sandbox runs it as a subprocess rather than in
its own loop so amqtt's logging, plugins and tasks stay out of the daemon-facing process and
stopping it is the same SIGTERM path as mosquitto.

Exit codes: 0 stopped by a signal; 2 bad arguments, amqtt missing, or the port was taken.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import logging
import signal
import sys
from typing import Any

from orchestrator.telemetry import configure_logging, get_logger

log = get_logger("failoverd.sandbox.broker")

EXIT_OK, EXIT_UNUSABLE = 0, 2
# amqtt's shutdown closes each session in turn; a stuck client must not hold the sandbox up.
SHUTDOWN_DEADLINE = 5.0


def available() -> bool:
    """True when amqtt can be imported (the ``sandbox`` extra is installed)."""
    # find_spec, not import: the sandbox parent should not pay amqtt's import cost.
    return importlib.util.find_spec("amqtt") is not None


def broker_config(port: int) -> dict[str, Any]:
    """amqtt configuration: one plain TCP listener on loopback, anonymous clients, and none of
    the default logging/$SYS plugins (they only add chatter and periodic tasks)."""
    if not 1 <= port <= 65535:
        raise ValueError(f"broker port must be 1..65535, got {port}")
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }


async def serve(port: int, stop: asyncio.Event) -> None:
    """Listen on 127.0.0.1:``port`` until ``stop`` is set, then shut down (bounded by
    SHUTDOWN_DEADLINE). Raises OSError when the port cannot be bound."""
    # amqtt ships no type information; it is optional (the `sandbox` extra), so import late.
    from amqtt.broker import Broker  # type: ignore[import-untyped,import-not-found,unused-ignore]

    broker = Broker(broker_config(port))
    await broker.start()
    log.info("embedded_broker_listening", host="127.0.0.1", port=port)
    try:
        await stop.wait()
    finally:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(broker.shutdown(), SHUTDOWN_DEADLINE)
        log.info("embedded_broker_stopped", port=port)


async def _run(port: int) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await serve(port, stop)
    except Exception as exc:  # amqtt wraps bind failures in its own BrokerError
        print(f"broker: cannot listen on 127.0.0.1:{port}: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator.sandbox.broker",
        description="an anonymous MQTT broker on 127.0.0.1 for the sandbox (amqtt)",
    )
    parser.add_argument("--port", type=int, required=True, help="TCP port on 127.0.0.1")
    args = parser.parse_args(argv)
    if not 1 <= args.port <= 65535:
        print(f"broker: --port must be 1..65535, got {args.port}", file=sys.stderr)
        return EXIT_UNUSABLE
    if not available():
        print("broker: amqtt is not installed (pip install 'failoverd[sandbox]')", file=sys.stderr)
        return EXIT_UNUSABLE
    configure_logging("warning")
    # amqtt logs every packet at INFO through stdlib logging; the sandbox only wants problems.
    logging.getLogger("amqtt").setLevel(logging.WARNING)
    logging.getLogger("transitions").setLevel(logging.WARNING)
    return asyncio.run(_run(args.port))


if __name__ == "__main__":
    sys.exit(main())
