"""Access in one package: who is calling and what they may do.

- `permissions`: the actions and roles, as enums, and the named action sets.
- `policy`: the pure rules (role, visibility, key project → actions; project standing; who
  manages a key; the catalog).
- `scopes`: token scopes granted and a token narrowed to its holder's current rights.
- `roles`: the role lookups (cached briefly) that feed the policy.
- `credentials`: access-key and password checks, key ID shapes.
- `identify`: every credential kind → a principal, and the throttled logins.
- `refusals`: the challenge and the refusal a client is told.
- `keyring`, `tokens`, `throttle`: server keys, signed tokens, failed-login throttling.
- `forwarded`: the caller's address behind trusted proxies (X-Forwarded-For), as the
  middleware that sets it before anything reads it.

Nothing here imports a service or a surface: services and surfaces import this.
"""
