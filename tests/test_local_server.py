"""The local Label Studio of the quickstart: ports, where it listens, what `ps` shows."""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path

import pytest

from tests.ls_fixtures import leave_time_wait, tcp_sockets
from tsp_cli.local_server import free_port, port_free


@pytest.mark.skipif(not Path("/proc/net/tcp").is_file(), reason="reads Linux /proc/net/tcp")
def test_port_with_only_time_wait_sockets_is_free() -> None:
    port = free_port()
    leave_time_wait(port)
    assert ("0100007F", "06") in tcp_sockets(port)  # the condition of a rerun right after Ctrl-C
    with socket.socket() as plain, pytest.raises(OSError) as err:
        plain.bind(("127.0.0.1", port))  # the check this replaces: refused for about a minute
    assert err.value.errno == errno.EADDRINUSE
    assert port_free(port)


def test_listening_port_is_not_free() -> None:
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        port = srv.getsockname()[1]
        assert not port_free(port)
    assert port_free(port)


def _process_group(pgid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) == pgid:
                    pids.append(int(entry.name))
            except ProcessLookupError:
                continue
    return pids


@pytest.mark.integration
@pytest.mark.skipif(not Path("/proc/net/tcp").is_file(), reason="reads Linux /proc")
def test_label_studio_listens_on_loopback_only_and_hides_the_password(label_studio) -> None:
    listening = [addr for addr, state in tcp_sockets(label_studio.port) if state == "0A"]
    assert listening == ["0100007F"], listening  # 127.0.0.1, not 00000000 (0.0.0.0) nor IPv6
    # from another interface of this machine, if it has one, nobody answers
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: no packet is sent, the route picks an address
            own = probe.getsockname()[0]
    except OSError:
        own = "127.0.0.1"
    if not own.startswith("127."):
        with socket.socket() as s, pytest.raises(OSError):
            s.settimeout(5)
            s.connect((own, label_studio.port))
    # the password is in no command line of Label Studio's processes (`ps` shows those to everyone)
    pids = _process_group(label_studio._proc.pid)
    assert pids
    for pid in pids:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert label_studio.password.encode() not in argv and b"--password" not in argv, argv
    assert "Starting development server at http://127.0.0.1:" in label_studio.log_path.read_text()


@pytest.mark.integration
def test_queue_check_user_is_another_member_with_its_own_token(label_studio, ls_client) -> None:
    from label_studio_sdk import LabelStudio

    token = label_studio.queue_check_token()
    assert label_studio.queue_check_token() == token  # made once, then read back
    assert oct(label_studio.verify_pat_path.stat().st_mode & 0o777) == "0o600"
    checker = LabelStudio(base_url=label_studio.url, api_key=token)
    me, them = ls_client.users.whoami(), checker.users.whoami()
    assert them.id != me.id and them.email == "queue-check@tsp.local"
    assert them.active_organization == me.active_organization
