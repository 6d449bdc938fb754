"""Authentication and authorization: server keys, tokens, the access policy, the token endpoint."""
