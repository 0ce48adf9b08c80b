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


#: addresses no cluster can be joined at, and what the refusal says about each (no lookup, no connection)
NOT_ADDRESSES = [
    ("ray://[::1", "it is not an address (Invalid IPv6 URL)"),
    ("ray://127.0.0.1:99999", "its port is not a number from 1 to 65535"),
    ("ray://127.0.0.1:0", "its port is 0"),
    ("127.0.0.1:0", "its port is 0"),
    ("ray://127.0.0.1:10001/some/path", "it has something after the host and port"),
    ("ray://127.0.0.1:10001?x=1", "it has something after the host and port"),
    ("http://127.0.0.1:8265", "an http address is the dashboard's or the Jobs API's"),
    ("anyscale://head", "anyscale:// is not a scheme Ray joins"),
    (" ", "it is empty"),
    (" ray://head:10001", "it has spaces around it"),
]


@pytest.mark.parametrize(("address", "why"), NOT_ADDRESSES)
def test_a_malformed_address_is_refused_by_its_text_naming_it(address: str, why: str) -> None:
    """Refused before any connection or ``ray.init`` (which raised ValueError for some: an unexpected error,
    exit 1; and for port 0 the check tried 10001 instead)."""
    from oaipipe.ray_cluster import check_ray_address, ray_address_problem

    assert why in (ray_address_problem(address) or "")
    with pytest.raises(ConfigError) as err:
        check_ray_address(address)
    assert f"cannot join the Ray cluster at {address}: " in str(err.value) and why in str(err.value)
    assert "ray start --head" in str(err.value)


@pytest.mark.parametrize("address", ["auto", "local", "head:6379", "ray://head:10001", "ray://[::1]:10001",
                                     "10.0.0.5", "ray://head.example"])
def test_well_formed_addresses_pass_the_text_check(address: str) -> None:
    from oaipipe.ray_cluster import ray_address_problem

    assert ray_address_problem(address) is None


def test_a_malformed_run_ray_address_is_placed_on_its_line_by_validate(tmp_path: Path) -> None:
    """``run.ray_address`` in the file is judged when the file is read: ``validate`` (which joins nothing) names
    its line, as ``run`` does, instead of the run failing later on Ray's own error."""
    project = _project(tmp_path, n=20, workers=2)
    project.write(run={"executor": "ray", "ray_address": "http://127.0.0.1:8265"})
    lines = project.file.read_text(encoding="utf-8").splitlines()
    line = next(i for i, text in enumerate(lines, 1) if "ray_address" in text)
    for command in ("validate", "run"):
        result = project.cli(command, str(project.file))
        assert result.exit_code == ExitCode.USAGE_ERROR, result
        assert f"{project.file.name}:{line}:" in result.err
        assert "run.ray_address: not a Ray address: http:// is not a scheme" in result.err
        assert "give auto, HOST:6379 (the GCS) or ray://HOST:10001" in result.err
        assert "Value error" not in result.err


def test_an_address_ray_init_refuses_is_the_same_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever Ray's ``init`` says of an address it will not take (a ValueError) is a ConfigError naming it."""
    from oaipipe import ray_cluster

    class FakeRay:
        def init(self, **kwargs: object) -> None:
            raise ValueError(f"Invalid address format: {kwargs['address']}")

    monkeypatch.setattr(ray_cluster, "check_ray_address", lambda address: None)
    with pytest.raises(ConfigError, match="cannot join the Ray cluster at head:6379: Invalid address format"):
        ray_cluster.join_ray(FakeRay(), "head:6379", 2)


def test_ray_address_without_the_ray_executor_is_refused_not_ignored(tmp_path: Path) -> None:
    """``--ray-address`` on a run whose executor is local was ignored in silence (the run went on local
    worker processes, exit 0); it is a usage error naming the missing ``--executor ray``, before anything runs."""
    project = _project(tmp_path, n=20, workers=2)
    result = project.cli("run", str(project.file), "--ray-address", "ray://head.invalid:10001")
    assert result.exit_code == ExitCode.USAGE_ERROR, result
    assert "--ray-address is read only with --executor ray" in result.err and "give --executor ray too" in result.err
    assert not (project.path / "runs").exists()  # nothing ran
