"""A real OAuth 2.0 / OIDC authorization server (oidc-provider on Node.js) for tests; see fixture.py."""
