#!/usr/bin/env python3
"""Uploads a file to a server with curl while sampling the server's RSS.

usage: upload_rss.py PID URL FILE KEY [INTERVAL_S] [TIMEOUT_S]

Before the upload it resets the server's peak-RSS counter (VmHWM, by
writing 5 to /proc/PID/clear_refs, where allowed) and records the idle RSS
(VmRSS). During the upload it samples VmRSS every INTERVAL_S seconds
(default 0.05). Prints key=value lines:

  idle_kib     VmRSS just before the upload
  peak_kib     highest VmRSS sampled during the upload
  hwm_kib      VmHWM after the upload (0 when it could not be reset)
  samples      how many samples were taken
  http_code    the server's answer to the PUT
  speed_bps    upload throughput as curl measured it (bytes/s)
  size_upload  bytes curl sent
"""

import subprocess
import sys
import time


def status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def main() -> int:
    if len(sys.argv) < 5:
        print(__doc__, file=sys.stderr)
        return 2
    pid, url, path, key = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    interval = float(sys.argv[5]) if len(sys.argv) > 5 else 0.05
    timeout = float(sys.argv[6]) if len(sys.argv) > 6 else 900.0

    hwm_reset = True
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        hwm_reset = False

    idle_samples = []
    for _ in range(5):
        idle_samples.append(status_kib(pid, "VmRSS"))
        time.sleep(0.1)
    idle = min(idle_samples)

    cmd = [
        "curl", "-s", "-o", "/dev/null",
        "--max-time", str(int(timeout)),
        "-w", "%{http_code} %{speed_upload} %{size_upload}",
        "-H", f"Authorization: Bearer {key}",
        "-T", path, url,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    peak, samples = idle, 0
    deadline = time.monotonic() + timeout + 10
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            peak = max(peak, status_kib(pid, "VmRSS"))
        except OSError:
            break  # the server went away
        samples += 1
        time.sleep(interval)
    if proc.poll() is None:
        proc.kill()
    out, _ = proc.communicate(timeout=30)
    try:
        peak = max(peak, status_kib(pid, "VmRSS"))
        hwm = status_kib(pid, "VmHWM") if hwm_reset else 0
    except OSError:
        hwm = 0
    fields = (out or "000 0 0").split()
    print(f"idle_kib={idle}")
    print(f"peak_kib={peak}")
    print(f"hwm_kib={hwm}")
    print(f"samples={samples}")
    print(f"http_code={fields[0]}")
    print(f"speed_bps={fields[1] if len(fields) > 1 else 0}")
    print(f"size_upload={fields[2] if len(fields) > 2 else 0}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
