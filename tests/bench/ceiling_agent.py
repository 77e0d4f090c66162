"""The agent with synthetic devices, pinned to one CPU: the child process of the pipeline
part (``python -m tests.bench.ceiling_agent ...``). Runs until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
from pathlib import Path

from citygate import logs
from citygate.app import Agent, run_until_signalled
from citygate.config import BufferSettings, Config, DeviceConfig, GatewaySettings, MqttSettings
from tests.support.synthetic import factory as synthetic


def config(
    data_dir: Path, broker_port: int, devices: int, values: int, interval: float, linger: float
) -> Config:
    """Synthetic devices the config loader does not know, built from the dataclasses."""
    options = {"values": values, "fail": "no"}
    return Config(
        path=data_dir / "gateway.toml",
        gateway=GatewaySettings(id="gw-ceiling", data_dir=data_dir),
        mqtt=MqttSettings(
            url=f"mqtt://127.0.0.1:{broker_port}",
            host="127.0.0.1",
            port=broker_port,
            client_id="citygate-gw-ceiling",
            linger=linger,
        ),
        buffer=BufferSettings(),
        serial={},
        ble=None,
        devices=tuple(
            DeviceConfig(
                id=f"synthetic-{i:03d}",
                driver="synthetic",
                interval=interval,
                enabled=True,
                labels={},
                options=options,
                driver_config=options,
                source=data_dir / "gateway.toml",
            )
            for i in range(devices)
        ),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--broker-port", type=int, required=True)
    parser.add_argument("--devices", type=int, required=True)
    parser.add_argument("--values", type=int, required=True)
    parser.add_argument("--interval", type=float, required=True)
    parser.add_argument("--linger", type=float, default=0.2)
    parser.add_argument("--cpu", type=int, help="pin this process (all its threads) to one CPU")
    parser.add_argument("--profile", type=Path, help="write cProfile stats of the event loop here")
    args = parser.parse_args()
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    logs.setup("info")
    agent = Agent(
        config(
            args.data_dir, args.broker_port, args.devices, args.values, args.interval, args.linger
        ),
        {"synthetic": synthetic},
        metrics_interval=1.0,
    )
    profiler = cProfile.Profile() if args.profile else None
    if profiler is not None:
        profiler.enable()
    try:
        asyncio.run(run_until_signalled(agent))
    finally:
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(args.profile)


if __name__ == "__main__":
    main()
