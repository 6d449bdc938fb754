"""Pure domain logic: grammar, digests, manifests and errors. No I/O here."""
