"""The registry's door: the Docker token endpoint (`routes`) and the guard of `/v2` (`guard`),
which read requests and apply `berth.access`."""
