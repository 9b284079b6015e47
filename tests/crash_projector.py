"""Run by tests as a child process: project a backlog in small, slow batches and print a line
after each batch's rows are written but before its transaction commits, so the test can kill -9
it in the middle of a transaction."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tokentrail.projections import projector as projector_module  # noqa: E402
from tokentrail.service import Service  # noqa: E402


def main() -> None:
    url, data_dir = sys.argv[1], sys.argv[2]
    size = int(os.environ.get("CRASH_BATCH", "25"))
    projector_module.BACKLOG_BATCH_SIZE = size  # small batches all the way through the backlog
    service = Service(url, data=Path(data_dir), environ=json.loads(os.environ["CRASH_ENVIRON"]))
    service.projector.batch_size = size
    original = service.projector._flush

    def slow_flush(batch):  # noqa: ANN001
        original(batch)
        print("flushed-uncommitted", flush=True)
        time.sleep(float(os.environ.get("CRASH_PAUSE", "0.3")))

    service.projector._flush = slow_flush  # type: ignore[method-assign]
    service.projector.catch_up()
    print("done", flush=True)


if __name__ == "__main__":
    main()
