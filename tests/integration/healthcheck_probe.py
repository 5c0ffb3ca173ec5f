"""Run an image's command and its HEALTHCHECK command as they are written, in a network of their own.

    unshare --net python -m tests.integration.healthcheck_probe '<CMD as JSON>' '<HEALTHCHECK CMD as JSON>'

Run inside a fresh network namespace (only loopback, brought up here), so the fixed port an
image's command binds cannot clash with anything else on the machine. Prints one JSON line:
whether the check passed while the command served, and whether it still passed once the
command was stopped (it must not: a check that always passes checks nothing).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time

from stack.processes import stop_process_group

READY_SECONDS = 60
CHECK_SECONDS = 10


def passes(check: list[str]) -> bool:
    return subprocess.run(check, capture_output=True, timeout=CHECK_SECONDS).returncode == 0


def main(command: list[str], check: list[str]) -> dict[str, bool]:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    with tempfile.TemporaryFile() as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + READY_SECONDS
            healthy = False
            while not healthy and server.poll() is None and time.monotonic() < deadline:
                healthy = passes(check)
                time.sleep(0 if healthy else 0.2)
        finally:
            stop_process_group(server.pid)
            server.wait()
        if not healthy:
            log.seek(0)
            sys.stderr.write(log.read().decode(errors="replace")[-3000:])
    return {"healthy_while_serving": healthy, "healthy_after_stop": passes(check)}


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]), json.loads(sys.argv[2]))))
