"""Bring an autoscaling Ray cluster up to COUNT x {RESOURCE: AMOUNT} before a job that sizes
itself from what the cluster has when it starts.

jobs/transcribe.py and jobs/evaluate.py plan their actor pool from ``ray.cluster_resources()``
at start-up (one actor per GPU; no GPU actors on a cluster without GPUs). On a cluster whose
GPU group scales from zero, they would see no GPUs. Run this first, as its own Ray job:

    ray job submit -- python infra/k8s/ensure_resources.py --resource GPU --count 2 --timeout 1800

It reserves the bundles in a SPREAD placement group, which makes the autoscaler start the
nodes, waits until the group is placed, then releases it: the nodes stay up for the
autoscaler's idle timeout (raycluster.yaml: 600 s), long enough for the next job to start on
them. Exit status: 0 resources present; 1 not placed within --timeout (nothing stays reserved).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Optional, Sequence


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="infra/k8s/ensure_resources.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--resource", default="GPU", help="Ray resource name (default GPU)")
    p.add_argument("--count", type=int, required=True, help="bundles (e.g. GPUs = worker pods of one GPU each)")
    p.add_argument("--amount", type=float, default=1.0, help="of --resource per bundle (default 1)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for the nodes (default 1800)")
    p.add_argument("--address", default=None, help="Ray address (default: $RAY_ADDRESS / the job's cluster)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.count < 1 or args.amount <= 0:
        build_parser().error("--count must be >= 1 and --amount > 0")
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    ray.init(address=args.address or "auto", logging_level="WARNING")
    wanted = args.count * args.amount
    have = ray.cluster_resources().get(args.resource, 0.0)
    print(f"cluster has {have:g} {args.resource}; wanted {wanted:g}", flush=True)
    if have >= wanted:
        return 0
    started = time.monotonic()
    pg = placement_group([{args.resource: args.amount}] * args.count, strategy="SPREAD")
    try:
        placed = pg.wait(timeout_seconds=args.timeout)
    finally:
        remove_placement_group(pg)
    have = ray.cluster_resources().get(args.resource, 0.0)
    if not placed:
        print(f"error: {args.count} x {{{args.resource}: {args.amount:g}}} not placed within {args.timeout:g} s "
              f"(cluster has {have:g} {args.resource}); check the worker group's maxReplicas and the node pool",
              file=sys.stderr, flush=True)
        return 1
    print(f"placed after {time.monotonic() - started:.0f} s; cluster has {have:g} {args.resource}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
