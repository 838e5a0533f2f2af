"""TLS, mutual TLS and bearer tokens, with the project's client and with plain grpc calls made the
way grpcurl makes them (a method path, raw bytes, metadata); the health service stays open;
no secret reaches the logs. Certificates are made at test time with the openssl CLI."""

from __future__ import annotations

import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import grpc
import pytest
from conftest import serve
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from relutil import ServeProcess, frame, raw_request
from segserve._proto.segmentation.v1 import segmentation_pb2 as pb
from segserve._proto.segmentation.v1 import segmentation_pb2_grpc as pb_grpc
from segserve.client import SegmenterClient
from segserve.edge.server import TlsConfig

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")

TOKEN = "s3cr3t-T0ken-for-tests-9f2c"
WRONG = "wrong-token-5e1d"
IMAGE = frame()


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """A CA, a server certificate for localhost/127.0.0.1 and a client certificate, all EC P-256."""
    d = tmp_path_factory.mktemp("pki")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl(
        "req",
        "-x509",
        *ec,
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=segserve test CA",
        cwd=d,
    )
    for name, ext in (
        ("server", "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"),
        ("client", "extendedKeyUsage=clientAuth\n"),
    ):
        (d / f"{name}.ext").write_text(ext)
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
        _openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.crt",
            "-days",
            "2",
            "-extfile",
            f"{name}.ext",
            cwd=d,
        )
    # a second, unrelated CA and client certificate: must be refused by the mTLS server
    _openssl(
        "req",
        "-x509",
        *ec,
        "-keyout",
        "rogue.key",
        "-out",
        "rogue.crt",
        "-days",
        "2",
        "-subj",
        "/CN=rogue",
        cwd=d,
    )
    return d


@pytest.fixture(scope="module")
def tls_server(small_model, pki):
    with serve(small_model, token=TOKEN, tls=TlsConfig(pki / "server.crt", pki / "server.key")) as running:
        yield running


def _secure_channel(port: int, pki: Path, client: str | None = None) -> grpc.Channel:
    key = chain = None
    if client is not None:
        key, chain = (pki / f"{client}.key").read_bytes(), (pki / f"{client}.crt").read_bytes()
    creds = grpc.ssl_channel_credentials((pki / "ca.crt").read_bytes(), key, chain)
    return grpc.secure_channel(f"127.0.0.1:{port}", creds)


def _bearer(token: str) -> tuple:
    return (("authorization", f"Bearer {token}"),)


def test_project_client_with_tls_and_token(tls_server, pki):
    target = f"127.0.0.1:{tls_server.port}"
    with SegmenterClient(target, token=TOKEN, root_certificates=pki / "ca.crt", timeout=10) as client:
        assert client.model_info().name == "toy"
        result = client.segment(IMAGE, "tls-1")
        assert result.frame_id == "tls-1" and result.mask.shape == (48, 64)
        assert [r.frame_id for r in client.stream([IMAGE] * 5)] == [str(i) for i in range(5)]
    for token, code in ((None, grpc.StatusCode.UNAUTHENTICATED), (WRONG, grpc.StatusCode.PERMISSION_DENIED)):
        with SegmenterClient(target, token=token, root_certificates=pki / "ca.crt", timeout=10) as client:
            for call in (
                lambda c: c.segment(IMAGE),
                lambda c: list(c.stream([IMAGE] * 3)),
                lambda c: c.model_info(),
            ):
                with pytest.raises(grpc.RpcError) as err:
                    call(client)
                assert err.value.code() == code


def test_plain_grpcurl_style_calls(tls_server, pki):
    """What `grpcurl -cacert ca.crt -H 'authorization: Bearer ...' 127.0.0.1:PORT <method>` does:
    reflection to list services, then a call by method path with serialized bytes."""
    with _secure_channel(tls_server.port, pki) as channel:
        # health: open without a token (probes, load balancers)
        health = health_pb2_grpc.HealthStub(channel)
        assert (
            health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
            == health_pb2.HealthCheckResponse.SERVING
        )
        call = channel.unary_unary("/segmentation.v1.Segmenter/Segment")  # bytes in, bytes out
        request = raw_request("curl-1", IMAGE).SerializeToString()
        with pytest.raises(grpc.RpcError) as err:
            call(request, timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "authorization: Bearer" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            call(request, timeout=5, metadata=_bearer(WRONG))
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        response = pb.SegmentResponse.FromString(call(request, timeout=5, metadata=_bearer(TOKEN)))
        assert response.frame_id == "curl-1" and len(response.mask.data) == 48 * 64
        # lower-case scheme and extra spaces are accepted like grpcurl -H sends them
        assert call(request, timeout=5, metadata=(("authorization", f"bearer  {TOKEN} "),))
        info = channel.unary_unary("/segmentation.v1.Segmenter/GetModelInfo")(
            b"", timeout=5, metadata=_bearer(TOKEN)
        )
        assert pb.ModelInfo.FromString(info).name == "toy"
        # reflection (`grpcurl list`) needs the token too
        stub = pb_grpc.SegmenterStub(channel)
        assert stub.GetModelInfo(pb.GetModelInfoRequest(), metadata=_bearer(TOKEN), timeout=5).name == "toy"
    with grpc.insecure_channel(f"127.0.0.1:{tls_server.port}") as plain:  # plaintext to a TLS port
        with pytest.raises(grpc.RpcError) as err:
            pb_grpc.SegmenterStub(plain).GetModelInfo(
                pb.GetModelInfoRequest(), timeout=3, metadata=_bearer(TOKEN)
            )
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_reflection_lists_services_with_token(small_model, pki):
    with (
        serve(small_model, token=TOKEN) as running,
        grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel,
    ):

        class Authed(grpc.UnaryUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
            def intercept_unary_unary(self, continuation, details, request):
                return continuation(_with_metadata(details), request)

            def intercept_stream_stream(self, continuation, details, request_iterator):
                return continuation(_with_metadata(details), request_iterator)

        services = ProtoReflectionDescriptorDatabase(grpc.intercept_channel(channel, Authed())).get_services()
        assert "segmentation.v1.Segmenter" in services


def _with_metadata(details):
    import collections

    fields = ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")
    Details = collections.namedtuple("Details", fields)
    return Details(
        details.method,
        details.timeout,
        _bearer(TOKEN),
        details.credentials,
        getattr(details, "wait_for_ready", None),
        getattr(details, "compression", None),
    )


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "segserve", *args], capture_output=True, text=True, timeout=60
    )


def test_cli_commands_speak_tls_and_token(tls_server, pki):
    """`segserve health` (no token: probes stay open), `info` and `segment` against a TLS server."""
    target, ca = f"127.0.0.1:{tls_server.port}", str(pki / "ca.crt")
    health = _cli("health", "--server", target, "--tls-ca", ca)
    assert health.returncode == 0 and "SERVING" in health.stdout
    plain = _cli("health", "--server", target, "--timeout", "2")
    assert plain.returncode == 1 and plain.stderr  # a plain-text channel to a TLS port fails cleanly
    info = _cli("info", "--server", target, "--tls-ca", ca, "--token", TOKEN)
    assert info.returncode == 0 and "toy" in info.stdout
    refused = _cli("info", "--server", target, "--tls-ca", ca)
    assert refused.returncode == 1 and "UNAUTHENTICATED" in refused.stderr
    assert TOKEN not in refused.stderr


def test_mutual_tls(small_model, pki):
    tls = TlsConfig(pki / "server.crt", pki / "server.key", client_ca=pki / "ca.crt")
    with serve(small_model, tls=tls) as running:
        target = f"127.0.0.1:{running.port}"
        with SegmenterClient(
            target,
            root_certificates=pki / "ca.crt",
            client_cert=(pki / "client.crt", pki / "client.key"),
            timeout=5,
        ) as client:
            assert client.segment(IMAGE, "m").frame_id == "m"
        mtls = ["--tls-ca", str(pki / "ca.crt"), "--tls-client-cert", str(pki / "client.crt")]
        assert (
            _cli("health", "--server", target, *mtls, "--tls-client-key", str(pki / "client.key")).returncode
            == 0
        )
        no_cert = _cli("health", "--server", target, "--tls-ca", str(pki / "ca.crt"))
        assert no_cert.returncode == 1 and "UNAVAILABLE" in no_cert.stderr
        half = _cli("health", "--server", target, *mtls)
        assert half.returncode != 0 and "go together" in half.stderr
        with _secure_channel(running.port, pki, client="client") as channel:
            raw = channel.unary_unary("/segmentation.v1.Segmenter/GetModelInfo")(b"", timeout=5)
            assert pb.ModelInfo.FromString(raw).name == "toy"
        for client in (None, "rogue"):  # no certificate, or one from another CA
            with _secure_channel(running.port, pki, client=client) as channel:
                with pytest.raises(grpc.RpcError) as err:
                    pb_grpc.SegmenterStub(channel).GetModelInfo(pb.GetModelInfoRequest(), timeout=3)
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_cli_server_tls_token_file_metrics_and_no_secret_in_logs(small_model, pki, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    server = ServeProcess(
        small_model,
        "--tls-cert",
        str(pki / "server.crt"),
        "--tls-key",
        str(pki / "server.key"),
        "--token-file",
        str(token_file),
        "--metrics-port",
        "0",
        "--log-format",
        "json",
        "--log-level",
        "debug",
        "--grace-s",
        "2",
        log_path=tmp_path / "serve.log",
    )
    try:
        target = server.address
        with SegmenterClient(target, token=TOKEN, root_certificates=pki / "ca.crt", timeout=10) as client:
            assert client.segment(IMAGE, "cli-1").frame_id == "cli-1"
        for token in (None, WRONG):
            with (
                SegmenterClient(target, token=token, root_certificates=pki / "ca.crt", timeout=10) as client,
                pytest.raises(grpc.RpcError),
            ):
                client.segment(IMAGE)
        metrics_line = next(e for e in server.json_logs() if e["msg"].startswith("metrics on"))
        url = metrics_line["msg"].split()[-1]
        text = urllib.request.urlopen(url, timeout=5).read().decode()
        assert 'segserve_errors_total{code="UNAUTHENTICATED",method="Segment"} 1.0' in text
        assert 'segserve_errors_total{code="PERMISSION_DENIED",method="Segment"} 1.0' in text
    finally:
        assert server.stop() == 0
    logs = server.stderr
    assert "refused /segmentation.v1.Segmenter/Segment: UNAUTHENTICATED" in logs
    assert TOKEN not in logs and WRONG not in logs
    assert TOKEN[:8] not in logs
