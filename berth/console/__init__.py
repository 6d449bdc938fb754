"""The web console: static files (HTML, CSS, JavaScript modules; no build step) served at
/console, that talk to the server only through the management API under /api/v1."""
