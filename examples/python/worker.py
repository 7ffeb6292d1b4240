#!/usr/bin/env python3
"""A worker serving one plain Python function as the task `example.wordcount`:

    JOBMESH_WORKER_TOKEN=$(jobmesh token --scope worker) python3 worker.py
    python3 submit_and_watch.py --task example.wordcount --args '{"text": "to be or not to be"}'

Ctrl-C (or SIGTERM) drains it: it takes nothing more, finishes what it runs,
and exits.
"""

import os
import time

import jobmesh

worker = jobmesh.Worker(os.environ.get("JOBMESH_DISPATCHER", "127.0.0.1:50053"),
                        os.environ.get("JOBMESH_WORKER_TOKEN"), slots=4)


@worker.task("example.wordcount")
def wordcount(args, ctx):
    words = str(args.get("text", "")).split()
    counts = {}
    for n, word in enumerate(words, 1):
        if ctx.cancelled.is_set():
            return None
        counts[word] = counts.get(word, 0) + 1
        ctx.progress(100 * n // len(words), f"{n}/{len(words)} words")
        time.sleep(0.1)
    ctx.log(f"counted {len(words)} words")
    return {"counts": counts}


if __name__ == "__main__":
    worker.run()
