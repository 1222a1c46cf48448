"""The agent process the crash test kills: boot (resume), run one update, print the result.

Usage: python crash_child.py STATE_DIR SERVER_DIR EVENTS_FILE [KILL_AFTER_EVENTS]

Prints ``ready`` once imports are done (the parent starts its kill timer then) and, if it
survives, one JSON line with the final state. With KILL_AFTER_EVENTS=n it SIGKILLs itself
right after its n-th reported event, i.e. right after the n-th persisted state change.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from edgefleet.agent.update.machine import UpdateMachine
from tests.agent.update.support import DirVerifier


class FileReporter:
    def __init__(self, path: Path, kill_after: int | None) -> None:
        self.path = path
        self.kill_after = kill_after
        self.count = 0

    def report(self, event: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"pid": os.getpid(), **event}) + "\n")
        self.count += 1
        if self.kill_after is not None and self.count >= self.kill_after:
            os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    state_dir, server_dir, events = (Path(a) for a in sys.argv[1:4])
    kill_after = int(sys.argv[4]) if len(sys.argv) > 4 else None
    print("ready", flush=True)
    verifier = DirVerifier(server_dir, chunk=2048, delay_s=0.002)
    machine = UpdateMachine(state_dir, verifier, FileReporter(events, kill_after))
    machine.boot()
    record = machine.run_once()
    print(json.dumps({"state": record.state.value, "label": machine.holder.label}), flush=True)
    machine.holder.close()


if __name__ == "__main__":
    main()
