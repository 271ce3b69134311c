"""Authenticated status requests per second: cached JWT and cached introspection against local dev tokens.

    .venv/bin/python bench/auth.py [--seconds 3] [--rounds 3]

One app per verifier, served in-process (Flask test client, so that only the toolkit is measured), the same
GET /hello/{id}/status each time. JWT and opaque tokens come from the test suite's real authorization server
(oidc-provider on loopback, Node.js needed); after the first request both are answered from the verifier's
caches. Modes are measured in turns (dev, jwt, introspection, dev, ...) and the ratios use the median of the
rounds, since machines are noisy.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from providers.hello import provider as hello  # noqa: E402
from tests.oidc.fixture import (  # noqa: E402
    CALLER,
    HELLO_SCOPE,
    JWT_RESOURCE,
    OPAQUE_RESOURCE,
    RESOURCE_SERVER,
    start_oidc_server,
)
from toolkit.auth import IntrospectionVerifier, JWTVerifier  # noqa: E402
from toolkit.server import create_app  # noqa: E402
from toolkit.testing import TokenAuthority  # noqa: E402


def app_with(verifier, token):
    app = create_app({"APTK_DATA_DIR": tempfile.mkdtemp(prefix="aptk-bench-auth-")},
                     providers=[("/hello", hello)], verifier=verifier)
    client = app.test_client()
    headers = {"Authorization": f"Bearer {token}"}
    created = client.post("/hello/run", json={"request_id": "bench", "body": {"echo_string": "x"}}, headers=headers)
    assert created.status_code == 202, created.json
    path = f"/hello/{created.json['action_id']}/status"
    assert client.get(path, headers=headers).status_code == 200  # warms the caches
    return client, path, headers


def rate(client, path, headers, seconds):
    count, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        response = client.get(path, headers=headers)
        assert response.status_code == 200, response.json
        count += 1
    return count / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="measuring time per mode and round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    with start_oidc_server() as oidc:
        authority = TokenAuthority()
        modes = {
            "dev": app_with(authority.verifier, authority.token(scopes=[HELLO_SCOPE])),
            "jwt (cached)": app_with(
                JWTVerifier(issuer=oidc.issuer, audience=JWT_RESOURCE), oidc.token(CALLER, JWT_RESOURCE)
            ),
            "introspection (cached)": app_with(
                IntrospectionVerifier(
                    client_id=oidc.client_id(RESOURCE_SERVER), client_secret=oidc.client_secret(RESOURCE_SERVER),
                    issuer=oidc.issuer, audience=OPAQUE_RESOURCE,
                ),
                oidc.token(CALLER, OPAQUE_RESOURCE),
            ),
        }
        results: dict[str, list[float]] = {name: [] for name in modes}
        for _ in range(args.rounds):
            for name, (client, path, headers) in modes.items():
                results[name].append(rate(client, path, headers, args.seconds))

    baseline = statistics.median(results["dev"])
    print(f"authenticated GET status, in-process, {args.rounds} rounds x {args.seconds:g} s (median)")
    for name, rates in results.items():
        median = statistics.median(rates)
        print(f"  {name:24s} {median:8.0f} req/s   ratio vs dev tokens {median / baseline:5.2f}")


if __name__ == "__main__":
    main()
