// A real OAuth 2.0 / OpenID Connect authorization server on loopback, for the test suite.
//
// Built on oidc-provider (https://github.com/panva/node-oidc-provider). It serves the client credentials grant,
// RFC 8707 resource indicators, RFC 9068 JWT access tokens, opaque access tokens and RFC 7662 token introspection;
// for the clients configured for them, browser sign-in (authorization code with PKCE) and, for public native
// clients, refresh tokens and RFC 7009 revocation.
// Everything lives in memory and a fresh RS256 signing key is generated at every start, so two instances never
// trust each other's tokens.
//
// Usage:  node server.mjs [--port N] [--host 127.0.0.1] [--config file.json] [--exit-on-stdin-close]
//
//   --port / OIDC_PORT        port to listen on; 0 (the default) lets the OS pick a free one
//   --host / OIDC_HOST        interface to bind, 127.0.0.1 by default; the issuer is http://<host>:<port>
//   --config / OIDC_CONFIG    JSON (a file path, or the JSON text itself in OIDC_CONFIG) whose "clients" and/or
//                             "resources" replace the defaults below
//   --exit-on-stdin-close     exit when stdin reaches EOF, so the server dies with the test process that spawned it
//
// Once listening, the server prints ONE line of JSON to stdout:
//   {"ready": true, "issuer": ..., "port": ..., "clients": [...], "resources": {...}, "jwks": {...}}
// with the effective clients (secrets included: this server is for tests only) and the public keys.
// Nothing else is ever written to stdout; diagnostics go to stderr.
//
// Client credentials tokens have no end user, so the provider makes `sub` the client id. The default clients'
// ids are UUIDs, so `sub` is directly usable as an identity id. `groups` (per client, below; left out when empty) is
// added to every access token and to introspection responses through `extraTokenClaims`; `sub` is added there too, because
// oidc-provider puts `sub` in introspection responses only for tokens that have an end user (accountId).

import { generateKeyPair, randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { promisify, parseArgs } from 'node:util';

// A fresh RSA key per instance, so tokens of one instance never verify against another's JWKS. It is generated on
// libuv's thread pool while oidc-provider loads (loading it is the slow part of starting).
const keyPair = promisify(generateKeyPair)('rsa', { modulusLength: 2048 });
const { default: Provider, errors } = await import('oidc-provider');

const HELLO = 'urn:aptk:scope:hello';
const OIDC_SCOPES = new Set(['openid', 'profile', 'offline_access']);
const OTHER = 'urn:aptk:scope:other';

// Resource indicator -> how tokens for it look. `format` is "jwt" (RFC 9068, signed RS256 with the provider's
// key, aud = the indicator) or "opaque" (a random string, checkable only through introspection).
const DEFAULT_RESOURCES = {
  'https://aptk.test/resources/jwt': { format: 'jwt', scope: `${HELLO} ${OTHER}`, access_token_ttl: 600 },
  'https://aptk.test/resources/opaque': { format: 'opaque', scope: `${HELLO} ${OTHER}`, access_token_ttl: 600 },
};

// `name` is for humans (and the Python fixture); `client_id` is what the provider and the tokens know.
// `public: true` makes a public native client (RFC 8252): no secret, PKCE, any port on a loopback redirect URI
// (register `http://127.0.0.1/`), and, with the `refresh_token` grant, refresh tokens for the `offline_access`
// scope. A public client's token requests that name scopes but no resource get the resource (among its
// `resources`) whose scopes hold them, as an authorization server that maps scopes to APIs does.
// `refresh_token_ttl` (seconds) sets how long its refresh tokens live (default 14 days).
// `resources` limits which resource indicators the client may ask for (default: all of them).
// `access_token_ttl` (seconds) overrides the resource's lifetime for this client's tokens.
// `introspect: true` marks the clients allowed to see introspection results (everyone else gets active=false).
// `omit_sub: true` leaves `sub` out of the client's tokens' introspection answers (as RFC 7662 allows), so that a
// resource server has to fall back to `client_id`. Client ids and groups need not be UUIDs.
const DEFAULT_CLIENTS = [
  {
    name: 'caller',
    client_id: '5d3c6a62-6f1c-4a3e-9d0b-2f4f7c1e8a01',
    client_secret: 'caller-secret-9f1b7c3e',
    groups: ['b7a1e3f0-3c4d-4e5f-8a9b-0c1d2e3f4a01'],
  },
  {
    name: 'other-caller',
    client_id: '8e2b4c7d-1a3f-4b6e-a5c9-7d0e1f2a3b02',
    client_secret: 'other-caller-secret-4d8e2a6b',
    groups: ['c2d4e6f8-1a3b-4c5d-9e7f-8a9b0c1d2e02', 'd3e5f7a9-2b4c-4d6e-8f0a-9b0c1d2e3f03'],
  },
  {
    name: 'short-lived',
    client_id: '2f6a9c1e-4b7d-4e8a-b3c5-6d9e0f1a2b03',
    client_secret: 'short-lived-secret-7a3c9e1f',
    groups: [],
    access_token_ttl: 2,
  },
  {
    name: 'resource-server',
    client_id: 'a4c8e2f6-9b1d-4f3a-8c5e-0b2d4f6a8c04',
    client_secret: 'resource-server-secret-2e6a8c4f',
    groups: [],
    introspect: true,
    grant_types: [],
  },
];

function fail(message) {
  process.stderr.write(`oidc test server: ${message}\n`);
  process.exit(2);
}

const { values: args } = parseArgs({
  options: {
    port: { type: 'string' },
    host: { type: 'string' },
    config: { type: 'string' },
    'exit-on-stdin-close': { type: 'boolean', default: false },
  },
});

const host = args.host ?? process.env.OIDC_HOST ?? '127.0.0.1';
const requestedPort = Number(args.port ?? process.env.OIDC_PORT ?? 0);
if (!Number.isInteger(requestedPort) || requestedPort < 0 || requestedPort > 65535) {
  fail(`invalid port ${args.port ?? process.env.OIDC_PORT}`);
}

let overrides = {};
try {
  if (args.config) overrides = JSON.parse(readFileSync(args.config, 'utf8'));
  else if (process.env.OIDC_CONFIG) overrides = JSON.parse(process.env.OIDC_CONFIG);
} catch (err) {
  fail(`cannot read the configuration: ${err.message}`);
}
const resources = overrides.resources ?? DEFAULT_RESOURCES;
const clients = (overrides.clients ?? DEFAULT_CLIENTS).map((c) => ({
  groups: [],
  introspect: false,
  grant_types: ['client_credentials'],
  ...c,
  name: c.name ?? c.client_id,
  resources: c.resources ?? Object.keys(resources),
}));
const clientsById = new Map(clients.map((c) => [c.client_id, c]));
// Browser sign-in (authorization code flow with PKCE) is served only when a client is configured for it, with
// `grant_types: ["authorization_code"]` and its `redirect_uris`. `accounts` (login -> groups) adds a `groups`
// claim to a person's ID token.
const browserSignIn = clients.some((c) => c.grant_types.includes('authorization_code'));
const refreshTokens = clients.some((c) => c.grant_types.includes('refresh_token'));
const accountGroups = overrides.accounts ?? {};

const { privateKey } = await keyPair;
const signingKey = { ...privateKey.export({ format: 'jwk' }), kid: randomUUID(), use: 'sig', alg: 'RS256' };
const publicJwk = (({ kty, n, e, kid, use, alg }) => ({ kty, n, e, kid, use, alg }))(signingKey);

function clientFor(ctx, client) {
  return clientsById.get(client?.clientId ?? ctx?.oidc?.client?.clientId);
}

// Listen first (port 0 works), then build the provider for the issuer we actually got: no free-port race.
let handler = (_req, res) => { res.statusCode = 503; res.end(); };
const server = createServer((req, res) => handler(req, res));
server.on('error', (err) => fail(err.message));
server.listen(requestedPort, host, () => {
  const { port } = server.address();
  const issuer = `http://${host.includes(':') ? `[${host}]` : host}:${port}`;

  const provider = new Provider(issuer, {
    clients: clients.map((c) => ({
      client_id: c.client_id,
      ...(c.public ? { application_type: 'native' } : { client_secret: c.client_secret }),
      grant_types: c.grant_types,
      response_types: c.grant_types.includes('authorization_code') ? ['code'] : [],
      redirect_uris: c.redirect_uris ?? [],
      token_endpoint_auth_method: c.public ? 'none' : 'client_secret_basic',
    })),
    jwks: { keys: [signingKey] },
    cookies: { keys: [randomUUID()] }, // signs the sign-in pages' cookies (browser clients only)
    clockTolerance: 0, // so a token is inactive the second it expires
    scopes: [...(browserSignIn ? ['openid', 'profile'] : []), ...(refreshTokens ? ['offline_access'] : []), HELLO, OTHER],
    // A person signs in with any login (it becomes `sub`, and `name` is derived from it) and any password.
    findAccount: async (_ctx, sub) => ({
      accountId: sub,
      claims: async () => ({ sub, name: `Test user ${sub}`, ...(accountGroups[sub] ? { groups: accountGroups[sub] } : {}) }),
    }),
    claims: { openid: ['sub'], profile: ['name', 'groups'] },
    conformIdTokenClaims: false, // the ID token carries the scopes' claims (name, groups), not only the userinfo
    pkce: { methods: ['S256'], required: () => true }, // a sign-in without a PKCE challenge is refused
    features: {
      // oidc-provider's own login and consent pages, for clients configured with the authorization_code grant.
      devInteractions: { enabled: browserSignIn },
      clientCredentials: { enabled: true },
      introspection: {
        enabled: true,
        // Introspection always requires client authentication; only clients marked `introspect` learn anything.
        allowedPolicy: async (ctx, client) => Boolean(clientFor(ctx, client)?.introspect),
      },
      revocation: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: async (ctx, client, oneOf) => {
          const known = clientFor(ctx, client);
          if (!known?.public) return oneOf; // oidc-provider's own default
          const wanted = (ctx.oidc.params.scope ?? '').split(' ').filter((s) => s && !OIDC_SCOPES.has(s));
          if (!wanted.length) return oneOf;
          const fits = (oneOf ?? known.resources).filter((indicator) => {
            const offered = new Set((resources[indicator]?.scope ?? '').split(' '));
            return wanted.every((s) => offered.has(s));
          });
          if (ctx.oidc.route === 'authorization' && !oneOf) return fits.length ? fits : undefined;
          return fits[0];
        },
        getResourceServerInfo: async (ctx, indicator, client) => {
          const resource = resources[indicator];
          if (!resource || !clientFor(ctx, client)?.resources.includes(indicator)) {
            throw new errors.InvalidTarget(`unknown or forbidden resource indicator ${indicator}`);
          }
          return {
            scope: resource.scope,
            audience: resource.audience ?? indicator,
            accessTokenTTL: resource.access_token_ttl ?? 600,
            accessTokenFormat: resource.format ?? 'opaque',
            ...(resource.format === 'jwt' ? { jwt: { sign: { alg: 'RS256' } } } : {}),
          };
        },
      },
    },
    extraTokenClaims: async (ctx, token) => {
      const client = clientsById.get(token.clientId);
      const groups = client?.groups ?? [];
      const sub = client?.omit_sub ? {} : { sub: token.accountId ?? token.clientId };
      return { ...sub, ...(groups.length ? { groups } : {}) };
    },
    ttl: {
      ClientCredentials: (ctx, token, client) => clientFor(ctx, client)?.access_token_ttl
        ?? token.resourceServer?.accessTokenTTL ?? 600,
      AccessToken: (ctx, token, client) => (clientFor(ctx, client)?.public
        ? clientFor(ctx, client).access_token_ttl : undefined) ?? token.resourceServer?.accessTokenTTL ?? 600,
      RefreshToken: (ctx, token, client) => clientFor(ctx, client)?.refresh_token_ttl ?? 14 * 24 * 3600,
    },
    // These are tests: render errors as plain JSON, never as HTML pages.
    renderError: async (ctx, out) => { ctx.type = 'json'; ctx.body = out; },
  });
  provider.proxy = false;
  provider.on('server_error', (_ctx, err) => process.stderr.write(`server_error: ${err.stack}\n`));
  handler = provider.callback();

  process.stdout.write(`${JSON.stringify({
    ready: true,
    issuer,
    port,
    discovery: `${issuer}/.well-known/openid-configuration`,
    clients,
    resources,
    jwks: { keys: [publicJwk] },
  })}\n`);
});

if (args['exit-on-stdin-close']) {
  process.stdin.on('end', () => process.exit(0));
  process.stdin.on('error', () => process.exit(0));
  process.stdin.resume();
}
for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => process.exit(0));
