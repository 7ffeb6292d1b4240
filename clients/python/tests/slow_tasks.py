"""Plain functions served by `python -m jobmesh.worker` in test_worker.py."""

import time


def slow(args, ctx):
    for step in range(int(args.get("steps", 4))):
        if ctx.cancelled.is_set():
            return None
        ctx.progress(100 * step // int(args.get("steps", 4)), f"step {step}")
        time.sleep(float(args.get("step_seconds", 0.5)))
    return {"slept": True}
