"""deploy/nginx: the shipped config passes `nginx -t`, and real calls go through nginx to real replicas:
unary calls spread call by call, a camera's streams stay on one replica, and a camera stream moves
without losing a frame when its replica drains."""

from __future__ import annotations

import socket
import sys
import threading
from pathlib import Path

import pytest
from frames import street_frame
from segserve.client import SegmenterClient
from servers import start_server

NGINX_DIR = Path(__file__).resolve().parents[2] / "deploy" / "nginx"
sys.path.insert(0, str(NGINX_DIR))
sys.path.insert(0, str(Path(__file__).parent))

import nginx_local  # noqa: E402
from replica_tools import SMALL, address, served, wait_draining  # noqa: E402

pytestmark = pytest.mark.skipif(
    nginx_local.nginx_binary() is None,
    reason="nginx is not installed (Debian: apt-get install nginx; .ci/run installs it)",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def pair(toy_model):
    servers = [start_server(toy_model) for _ in range(2)]
    yield servers
    for server in servers:
        server.drain_and_stop(1.0)


def test_shipped_files_pass_nginx_t_as_debian_includes_them(tmp_path):
    """segserve.conf verbatim, included in http {} as Debian's conf.d/ is, beside the example list."""
    (tmp_path / "segserve-replicas.conf").write_text((NGINX_DIR / "segserve-replicas.conf").read_text())
    main = tmp_path / "nginx.conf"
    main.write_text(
        nginx_local.MAIN_CONF.format(prefix=tmp_path).replace(
            "include segserve.conf;", f"include {NGINX_DIR / 'segserve.conf'};"
        )
    )
    (tmp_path / "tmp").mkdir()
    result = nginx_local.check(main)
    assert result.returncode == 0, result.stderr


def test_rendered_config_passes_nginx_t(tmp_path):
    conf = nginx_local.render(tmp_path, "127.0.0.1:50999", ["127.0.0.1:1", "[::1]:2"])
    result = nginx_local.check(conf)
    assert result.returncode == 0, result.stderr
    assert "listen 127.0.0.1:50999 http2;" in (tmp_path / "segserve.conf").read_text()


def test_unary_calls_spread_and_a_camera_stays_on_one_replica(pair, tmp_path):
    port = _free_port()
    conf = nginx_local.render(tmp_path, f"127.0.0.1:{port}", [address(s) for s in pair])
    with nginx_local.Nginx(conf), SegmenterClient(f"127.0.0.1:{port}") as client:
        for i in range(10):
            client.segment(SMALL, str(i))
        assert [served(s) for s in pair] == [5, 5]  # one nginx worker: strict round robin
        for _ in range(3):  # three streams of one camera, one after the other
            results = list(client.stream([SMALL] * 4, camera_id="front-left"))
            assert [r.frame_id for r in results] == ["0", "1", "2", "3"]
        assert sorted(served(s, "StreamSegment") for s in pair) == [0, 12]
        before = [served(s, "StreamSegment") for s in pair]
        for _ in range(4):  # streams without a camera id spread like unary calls
            list(client.stream([SMALL] * 2))
        assert [served(s, "StreamSegment") - b for s, b in zip(pair, before, strict=True)] == [4, 4]


def test_camera_stream_through_nginx_moves_when_its_replica_drains(pair, tmp_path):
    port = _free_port()
    conf = nginx_local.render(tmp_path, f"127.0.0.1:{port}", [address(s) for s in pair])
    frames = [street_frame(160, 120, seed=i) for i in range(16)]
    go = threading.Event()

    def source():
        yield from frames[:4]
        assert go.wait(60)
        yield from frames[4:]

    results = []
    with nginx_local.Nginx(conf), SegmenterClient(f"127.0.0.1:{port}") as client:
        for result in client.stream(source(), camera_id="rear"):
            results.append(result)
            if result.frame_id == "0":
                victim = next(s for s in pair if served(s, "StreamSegment"))
                drainer = threading.Thread(target=victim.drain_and_stop, args=(30.0,))
                drainer.start()
                wait_draining(victim.port)
                go.set()  # the frames from here on cannot be accepted by the draining replica
    drainer.join()
    survivor = next(s for s in pair if s is not victim)
    assert client.stream_moves >= 1
    assert [r.frame_id for r in results] == [str(i) for i in range(16)]
    assert all(r.error is None and r.mask is not None for r in results)
    assert served(survivor, "StreamSegment") >= 1
