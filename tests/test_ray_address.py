"""``--executor ray`` with a cluster address that does not answer fails in seconds, naming the address and the
fix, instead of waiting for ``ray.init`` (which retries an unreachable address for a minute and more).

The unreachable address is a loopback port bound and not listening: a connection to it is refused at once,
and no other process can take the port while the test holds it.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_scale_out import _project

from oaipipe.errors import ConfigError, ExitCode

pytest.importorskip("ray", reason="ray is not installed (pip install 'oaipipe[ray]'; the test extra has it)")


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port nothing listens on (bound by the test, so nothing else takes it meanwhile)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.mark.parametrize("form", ["ray://127.0.0.1:{port}", "127.0.0.1:{port}"])
def test_an_address_nothing_answers_at_is_refused_naming_it_and_the_fix(closed_port: int, form: str) -> None:
    from oaipipe.ray_cluster import check_ray_address

    address = form.format(port=closed_port)
    with pytest.raises(ConfigError) as err:
        check_ray_address(address)
    text = str(err.value)
    assert f"cannot join the Ray cluster at {address}: 127.0.0.1:{closed_port}: " in text
    assert "ray start --head" in text and "--ray-address / run.ray_address" in text


@pytest.mark.parametrize(("address", "why"), [("ray://", "names no host"), ("ray://head:port", "not a number")])
def test_an_address_that_is_not_one_is_refused(address: str, why: str) -> None:
    from oaipipe.ray_cluster import check_ray_address

    with pytest.raises(ConfigError, match=why):
        check_ray_address(address)


def test_auto_without_a_running_cluster_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    """``auto`` is the cluster Ray finds on this machine: none found is the same clear error (Ray's lookup is
    stubbed: other processes on this machine may run a Ray of their own)."""
    from ray._private import services

    from oaipipe.ray_cluster import check_ray_address

    def none_found(address: str) -> str:
        raise ConnectionError("Could not find any running Ray instance.")

    monkeypatch.setattr(services, "canonicalize_bootstrap_address_or_die", none_found)
    with pytest.raises(ConfigError, match="at auto: no running Ray cluster was found on this machine"):
        check_ray_address("auto")
    check_ray_address("local")  # Ray starts one: nothing to reach
    check_ray_address(None)


def test_auto_checks_the_address_ray_finds(monkeypatch: pytest.MonkeyPatch, closed_port: int) -> None:
    """A cluster Ray still lists on this machine but that is gone (a stale /tmp/ray entry) fails fast too."""
    from ray._private import services

    from oaipipe.ray_cluster import check_ray_address

    monkeypatch.setattr(services, "canonicalize_bootstrap_address_or_die", lambda _: f"127.0.0.1:{closed_port}")
    with pytest.raises(ConfigError, match=f"at auto: 127.0.0.1:{closed_port}: "):
        check_ray_address("auto")


@pytest.mark.parametrize(("how", "form"), [("--ray-address", "127.0.0.1:{port}"),
                                           ("run.ray_address", "ray://127.0.0.1:{port}")])
def test_a_run_with_an_unreachable_cluster_fails_in_seconds(tmp_path: Path, closed_port: int, how: str,
                                                            form: str) -> None:
    project = _project(tmp_path, n=20, workers=2)
    address = form.format(port=closed_port)
    args = ["--ray-address", address] if how == "--ray-address" else ["--set", f"run.ray_address={address}"]
    # the console script in its own process: no Ray of this test process is in the way; the timeout is a
    # backstop (ray.init retried such an address for over 90 s)
    result = project.cli_process("run", str(project.file), "--executor", "ray", *args, timeout=45)
    assert result.exit_code == ExitCode.USAGE_ERROR, result
    assert f"cannot join the Ray cluster at {address}" in result.err and "ray start --head" in result.err


def test_ray_client_without_its_package_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``ray://`` address that answers, on an install without ``ray[client]``: a clear error, not Ray's
    ValueError as an unexpected one."""
    import importlib.util

    from oaipipe.ray_cluster import join_ray

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "grpc" else real(name, *a))
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        address = f"ray://127.0.0.1:{listening.getsockname()[1]}"
        with pytest.raises(ConfigError, match="Ray Client, which needs the Python package 'grpcio'") as err:
            join_ray(object(), address, 2)  # never reaches ray.init
    assert "pip install 'ray[client]'" in str(err.value)
