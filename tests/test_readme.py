"""The README's two commands are the project's front door: keep them true."""

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    block = re.search(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    return [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]


def test_the_readme_starts_with_the_demo_and_the_test_command():
    assert readme_commands() == ["make demo", "make test"]
    makefile = (ROOT / "Makefile").read_text()
    assert "interest-updater demo" in makefile and "-m pytest" in makefile
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_the_demo_command_runs_and_stops_cleanly():
    # `make demo` is `interest-updater demo` after the install step CI has just run.
    result = subprocess.run([sys.executable, "-m", "streams", "demo"],
                            capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert "training a small model" in out and "metrics: http://127.0.0.1:" in out
    # The first 12 events, then the first events of 3 followed users, each with its interests.
    # How many refreshes a followed user gets depends on how the machine batches their events
    # (a slow machine folds more of them into one refresh), so the bound is an upper one.
    from streams.cli.demo import FOLLOWED_EVENTS, FOLLOWED_USERS
    users = re.findall(r"^user +(\S+) .* -> ", out, re.M)
    assert len(users) > 12
    followed = Counter(users[12:])
    assert len(followed) == FOLLOWED_USERS and max(followed.values()) <= FOLLOWED_EVENTS
    assert max(followed.values()) >= 2, "no followed user was seen changing"
    assert len(re.findall(r"^ +interests: .*categories .*\| next ", out, re.M)) > 12
    assert re.search(r"long-term drift \d\.\d{3}", out)
    applied = re.search(r"applied (\d+) events in \d+ micro-batches, dead-lettered 0", out)
    assert applied and int(applied.group(1)) > 10_000
    # Freshness is printed apart for the steady tail: the real-time figure (not asserted: it is the machine's).
    assert re.search(r"^real time at 100 events/s: 1000 events in .* freshness .* p99 \d+ ms$", out, re.M), out[-1500:]
    assert "stopped: worker, broker and Redis are down" in out
