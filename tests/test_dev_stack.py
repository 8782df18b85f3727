"""`./tally-dev up`, as a newcomer runs it: it serves, and closing its terminal cleans up."""

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.servers import free_port

ROOT = Path(__file__).resolve().parent.parent


def _running(marker: str) -> list[str]:
    """Command lines of live processes that mention `marker`."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if proc.name.isdigit() and marker in cmdline:
            found.append(cmdline)
    return found


@pytest.mark.parametrize("options", [[], ["--cluster"]], ids=["redis", "cluster"])
def test_tally_dev_up_serves_and_a_closed_terminal_leaves_nothing_behind(
    options: list[str],
) -> None:
    port = free_port()
    process = subprocess.Popen(
        ["./tally-dev", "up", "--port", str(port), *options],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, as a terminal gives it
    )
    assert process.stdout is not None
    output = ""
    deadline = time.monotonic() + 300
    try:
        while "Requests are logged below" not in output:
            assert time.monotonic() < deadline and process.poll() is None, output
            output += process.stdout.readline()
        key = re.search(r"API key\s+(\S+)", output)
        dirs = [Path(d) for d in re.findall(r"data in (\S+)\)", output)]
        env_file = re.search(r"source (\S+)", output)
        assert key and len(dirs) == (3 if options else 2) and env_file, output
        assert all(d.exists() for d in dirs)
        variables = Path(env_file[1]).read_text()
        assert f"TALLY_PUBLIC_URL=http://127.0.0.1:{port}" in variables
        assert "TALLY_REDIS_URL=" in variables and "TALLY_DATABASE_URL=" in variables
        assert "TALLY_SECRET_KEY=" in variables, variables
        assert ("TALLY_REDIS_CLUSTER=true" in variables) == bool(options), variables
        assert Path(env_file[1]).stat().st_mode & 0o077 == 0, "the env file holds the secret key"
        added = httpx.post(
            f"http://127.0.0.1:{port}/credits/add",
            json={"user_id": "user_001", "amount": 100},
            headers={"Authorization": f"Bearer {key[1]}"},
        )
        assert added.status_code == 200 and added.json()["balance_after"] == 100
        _sign_in(output, port)
    finally:
        os.killpg(process.pid, signal.SIGHUP)  # the terminal closes
        rest, _ = process.communicate(timeout=60)
    assert "SIGHUP: stopping Tally" in rest
    assert not [d for d in dirs if d.exists()]
    assert not Path(env_file[1]).exists()
    for marker in [f"--port {port}", *map(str, dirs)]:
        assert _running(marker) == []


def _sign_in(output: str, port: int) -> None:
    """The printed dashboard URL, email and password sign in."""
    url = re.search(r"dashboard\s+(\S+)", output)
    email = re.search(r"email\s+(\S+)", output)
    password = re.search(r"password\s+(\S+)", output)
    assert url and email and password, output
    assert url[1] == f"http://127.0.0.1:{port}/dashboard/"
    with httpx.Client(base_url=url[1]) as browser:
        form = browser.get("login")
        token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
        assert form.status_code == 200 and token, form.text
        signed_in = browser.post(
            "login", data={"csrf_token": token[1], "email": email[1], "password": password[1]}
        )
        assert signed_in.status_code == 303 and signed_in.headers["location"] == "/dashboard/"
        assert "Apps" in browser.get("").text
