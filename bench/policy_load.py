"""Benchmark: what hostile policy files cost the daemon's event loop and memory.

The daemon loads policies the way ``failoverd run`` does on a reload
(``orchestrator.daemon.support.try_load``: the loader in a worker thread) while a ticker on
the event loop wakes every millisecond and records how late it woke. Measured, per file:

* the loop's worst lateness while the file loads (median and max over 10 loads), against
  baselines measured in the same run: the ticker with nothing loading (the machine's own
  noise), and the same file loaded *on* the loop (what a reload did before it moved to a
  thread);
* RSS growth over ``--reloads`` reloads of the example policies and of the hostile files
  (after a warm-up of 20), the issue's "+13.5 MB over 200 reloads" measure.

Files: the 333-byte and the 4 KB alias bombs, a recursive alias, the largest file the loader
reads (256 KiB, one scalar), 20,000 keys, 900 levels of nesting, a 5,000-digit integer, and
the example policy set as the honest baseline. The process first does what the daemon does
once started (``tune_process``: start-up objects out of the collector, GIL handed over
every 1 ms).

    python bench/policy_load.py [--reloads N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orchestrator.daemon.support import try_load, tune_process
from orchestrator.policy.loader import load_policy_set
from orchestrator.policy.yamlsource import Limits
from orchestrator.telemetry import configure_logging
from tests.chaos.policy_corpus import bomb

ROOT = Path(__file__).resolve().parents[1]
TICK = 0.001
ROUNDS = 10


def hostile_files(folder: Path) -> dict[str, Path]:
    limit = Limits()
    texts = {
        "bomb-333B": bomb(6),
        "bomb-4KB": bomb(9, 20),
        "recursive-alias": "service: &s [*s]\n",
        "largest-file": "description: " + "a" * (limit.max_bytes - 20) + "\n",
        "keys-20000": "".join(f"k{i}: {i}\n" for i in range(limit.max_nodes + 10)),
        "nesting-900": "service: " + "[" * 900 + "]" * 900 + "\n",
        "digits-5000": "rto: " + "9" * 5000 + "\n",
    }
    out = {}
    for name, text in texts.items():
        folder_ = folder / name
        folder_.mkdir()
        (folder_ / "policy.yaml").write_text(text)
        out[name] = folder_
    out["examples"] = ROOT / "policies"
    return out


class Ticker:
    """Wakes every TICK on the loop; keeps the worst lateness since the last reset."""

    def __init__(self) -> None:
        self.worst = 0.0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + TICK
            await asyncio.sleep(TICK)
            self.worst = max(self.worst, loop.time() - due)


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


async def measure(reloads: int) -> None:
    tune_process()  # as the daemon does once started
    ticker = Ticker()
    task = asyncio.create_task(ticker.run())
    with tempfile.TemporaryDirectory() as tmp:
        files = hostile_files(Path(tmp))

        async def idle() -> None:
            await asyncio.sleep(0.05)

        async def threaded(path: Path) -> None:
            await try_load([str(path)])

        async def on_loop(path: Path) -> None:
            with contextlib.suppress(Exception):
                load_policy_set([path])

        async def lateness(make: object, rounds: int = ROUNDS) -> tuple[float, float]:
            """Median and max over ``rounds`` of the loop's worst lateness in one round."""
            await make()  # type: ignore[operator]  # warm-up: first use builds caches
            seen = []
            for _ in range(rounds):
                await asyncio.sleep(0.01)
                ticker.worst = 0.0
                await make()  # type: ignore[operator]
                await asyncio.sleep(0.005)
                seen.append(ticker.worst * 1000)
            return statistics.median(seen), max(seen)

        idle_med, idle_max = await lateness(idle)
        print(f"idle loop: worst lateness per round median {idle_med:.2f} ms, max {idle_max:.2f}")
        print("worst lateness per load, median / max over the rounds (ms):")
        print(f"{'file':<16} {'load s':>7} {'in thread':>14} {'on the loop':>14} {'ratio':>6}")
        worst_median = 0.0
        for name, path in files.items():
            started = time.perf_counter()
            t_med, t_max = await lateness(lambda p=path: threaded(p))
            load_s = (time.perf_counter() - started) / (ROUNDS + 1)
            l_med, l_max = await lateness(lambda p=path: on_loop(p))
            worst_median = max(worst_median, t_med)
            print(
                f"{name:<16} {load_s:7.3f} {t_med:6.1f} / {t_max:5.1f} {l_med:6.1f} / {l_max:5.1f}"
                f" {l_med / t_med if t_med else float('inf'):5.1f}x"
            )
        growth = {}
        for label, paths in (
            ("examples", [files["examples"]]),
            ("hostile", [p for n, p in files.items() if n != "examples"]),
        ):
            for i in range(reloads):
                for path in paths:
                    await try_load([str(path)])
                if i == 19:
                    gc.collect()
                    warm = rss_mb()
            gc.collect()
            end = rss_mb()
            growth[label] = (warm, end)
            print(
                f"{reloads} reloads of {label}: RSS {warm:.1f} MB after 20 -> {end:.1f} MB"
                f" ({(end - warm) / warm * 100:+.1f}%)"
            )
    task.cancel()
    ex, ho = growth["examples"], growth["hostile"]
    print(
        f"loop_block_median_ms={worst_median:.1f}"
        f" idle_median_ms={idle_med:.1f}"
        f" rss_growth_pct_examples={(ex[1] - ex[0]) / ex[0] * 100:.1f}"
        f" rss_growth_pct_hostile={(ho[1] - ho[0]) / ho[0] * 100:.1f}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--reloads", type=int, default=200, help="reloads (default 200)")
    args = parser.parse_args(argv)
    if args.reloads < 21:
        parser.error("--reloads must be above the 20 of the warm-up")
    configure_logging("critical", json=True)  # every reload logs its errors otherwise
    asyncio.run(measure(args.reloads))
    return 0


if __name__ == "__main__":
    sys.exit(main())
