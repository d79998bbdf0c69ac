"""A multi-worker job's task listens for its peers inside ``task_ports`` (the range a worker VM's firewall
opens to the other workers), or on any free port when the setting is empty."""

from __future__ import annotations

import socket

import pytest

from appliance.server.network import listen_for_peers, parse_port_range
from appliance.server.settings import Settings
from servicecore.errors import BadInputError
from tests.support.processes import free_port


def test_the_range_setting_is_checked(tmp_path) -> None:
    assert parse_port_range("", "task_ports") is None
    assert parse_port_range("29200-29299", "task_ports") == range(29200, 29300)
    assert parse_port_range("29200", "task_ports") == range(29200, 29201)
    for bad in ("29299-29200", "a-b", "0-10", "65000-70000"):
        with pytest.raises(BadInputError, match="task_ports"):
            Settings(data_dir=tmp_path, task_ports=bad)


def test_a_task_listens_on_the_first_free_port_of_the_range() -> None:
    first = free_port()
    ports = range(first, first + 2)
    with socket.socket() as taken:
        try:
            taken.bind(("127.0.0.1", first))
        except OSError:
            pytest.skip("the port next to a free one was just taken")
        with listen_for_peers("127.0.0.1", ports) as listener:
            # The first port is held by someone else: the task takes the next one of the range.
            assert listener.getsockname()[1] == first + 1
            with pytest.raises(BadInputError, match=f"every port of task_ports \\({first}-{first + 1}\\)"):
                listen_for_peers("127.0.0.1", ports)
            # And it accepts a peer's connection there.
            with socket.create_connection(("127.0.0.1", first + 1), timeout=5):
                pass


def test_without_a_range_a_task_takes_any_free_port() -> None:
    with listen_for_peers("127.0.0.1", None) as listener:
        assert listener.getsockname()[1] > 0
