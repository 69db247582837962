"""A pass-through stage worker for process-level tests (SIGKILL, SIGTERM).

Usage: passthrough_worker.py BOOTSTRAP PREFIX MAX_SLEEP_S [MAX_IN_FLIGHT]
"""

from __future__ import annotations

import asyncio
import random
import sys

from iterrefine.config import Config, KafkaConfig, RuntimeConfig
from iterrefine.item.model import Item
from iterrefine.observe.logging import configure_logging
from iterrefine.runtime import Output, Stage, decode_raw_record
from iterrefine.runtime.serve import install_stop_signals, serve_stages


async def main() -> None:
    bootstrap, prefix, max_sleep = sys.argv[1], sys.argv[2], float(sys.argv[3])
    in_flight = int(sys.argv[4]) if len(sys.argv) > 4 else 256
    config = Config(
        kafka=KafkaConfig(topic_prefix=prefix, partitions=8),
        runtime=RuntimeConfig(commit_interval_ms=200, drain_timeout_s=20.0,
                              session_timeout_ms=3000, heartbeat_interval_ms=500,
                              max_in_flight=in_flight),
    )

    async def passthrough(item: Item) -> list[Output]:
        await asyncio.sleep(random.uniform(0, max_sleep))
        return [Output("items.scored", item)]

    stop = asyncio.Event()
    install_stop_signals(stop)
    stage = Stage("passthrough", "items.raw", passthrough, decode=decode_raw_record,
                  outputs=("items.scored",), waits=True)
    await serve_stages([stage], config=config, bootstrap_servers=bootstrap, stop=stop)


if __name__ == "__main__":
    configure_logging(json=True)
    asyncio.run(main())
    sys.exit(0)
