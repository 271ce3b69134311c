"""The recommended production front, deploy/nginx.conf, for real: Debian's nginx on loopback with TLS, proxying
to `aptk serve`."""

from __future__ import annotations

import datetime as dt
import json
import ipaddress
import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import requests

from .support import free_port

NGINX = os.environ.get("APTK_TEST_NGINX", "/usr/sbin/nginx")
CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "nginx.conf"
ALICE = "6a3b4d5e-0000-4000-8000-00000000a11c"

pytestmark = pytest.mark.skipif(
    not os.access(NGINX, os.X_OK), reason=f"no nginx at {NGINX} (Debian: apt-get install nginx; .ci/run does)"
)


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A throwaway certificate for localhost / 127.0.0.1 and its key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                    x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def site_config(upstream_port: int, https_port: int, http_port: int, cert: Path, key: Path) -> str:
    """deploy/nginx.conf with the test's ports and certificate; every value swapped must be found."""
    text = CONFIG.read_text()
    swaps = {
        "server 127.0.0.1:5000;": f"server 127.0.0.1:{upstream_port};",
        "listen 443 ssl;": f"listen 127.0.0.1:{https_port} ssl;",
        "listen 80;": f"listen 127.0.0.1:{http_port};",
        "/etc/letsencrypt/live/provider.example.org/fullchain.pem": str(cert),
        "/etc/letsencrypt/live/provider.example.org/privkey.pem": str(key),
        "provider.example.org": "localhost",
    }
    for old, new in swaps.items():
        assert old in text, f"deploy/nginx.conf no longer holds {old!r}; update this test"
        text = text.replace(old, new)
    return text


@pytest.fixture
def nginx(tmp_path, start_server):
    server = start_server(workers=2, tokens={"alice": {"identity": ALICE}})
    root = tmp_path / "nginx"
    root.mkdir()
    cert, key = self_signed(root)
    https_port, http_port = free_port(), free_port()
    (root / "site.conf").write_text(site_config(server.port, https_port, http_port, cert, key))
    temp = "\n".join(f"    {kind}_temp_path {root / kind};" for kind in ("client_body", "proxy"))
    (root / "nginx.conf").write_text(
        ("user root;\n" if os.geteuid() == 0 else "")
        + f"pid {root / 'nginx.pid'};\nerror_log {root / 'error.log'} info;\ndaemon off;\nworker_processes 1;\n"
        f"events {{}}\nhttp {{\n    access_log {root / 'access.log'};\n{temp}\n"
        f"    include {root / 'site.conf'};\n}}\n"
    )
    checked = subprocess.run([NGINX, "-t", "-p", str(root), "-c", str(root / "nginx.conf")], capture_output=True,
                             text=True)
    assert checked.returncode == 0, checked.stderr
    process = subprocess.Popen([NGINX, "-p", str(root), "-c", str(root / "nginx.conf")], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, start_new_session=True)
    base = f"https://127.0.0.1:{https_port}"
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                requests.get(base + "/", verify=str(cert), timeout=1)
                break
            except requests.ConnectionError:
                assert process.poll() is None, process.stderr.read()
                assert time.monotonic() < deadline, "nginx did not start"
                time.sleep(0.1)
        yield base, f"http://127.0.0.1:{http_port}", str(cert), server
    finally:
        process.send_signal(signal.SIGQUIT)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
        shutil.rmtree(root, ignore_errors=True)


def test_a_run_and_its_status_through_nginx_with_tls(nginx):
    base, plain, cert, server = nginx
    auth = {"Authorization": f"Bearer {server.minted['alice']}"}

    index = requests.get(base + "/", verify=cert, timeout=10)
    started = requests.post(base + "/hello/run", verify=cert, timeout=10, headers=auth,
                            json={"request_id": str(uuid.uuid4()), "body": {"echo_string": "through nginx"}})
    action_id = started.json()["action_id"]
    deadline = time.monotonic() + 10
    while (status := requests.get(f"{base}/hello/{action_id}/status", verify=cert, timeout=10,
                                  headers=auth)).json()["status"] == "ACTIVE" and time.monotonic() < deadline:
        time.sleep(0.1)
    redirected = requests.get(plain + "/hello/", allow_redirects=False, timeout=10)

    assert index.status_code == 200 and [p["url"] for p in index.json()["providers"]][0].startswith("/")
    assert started.status_code == 202, started.text
    assert status.status_code == 200
    assert status.json()["status"] == "SUCCEEDED"
    assert "through nginx" in json.dumps(status.json()["details"])
    assert status.headers["Strict-Transport-Security"].startswith("max-age=")
    assert status.headers["Cache-Control"] == "no-store"
    assert redirected.status_code == 301
    assert redirected.headers["Location"] == "https://127.0.0.1/hello/"


def test_nginx_refuses_an_oversized_body_as_json(nginx):
    base, _, cert, server = nginx
    refused = requests.post(base + "/hello/run", verify=cert, timeout=30,
                            headers={"Authorization": f"Bearer {server.minted['alice']}",
                                     "Content-Type": "application/json"},
                            data=b" " * (10 * 1024 * 1024 + 1))
    assert refused.status_code == 413
    assert refused.json()["code"] == "RequestTooLarge"
