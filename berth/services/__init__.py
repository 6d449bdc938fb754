"""The core: push and pull flows, projects and repositories. HTTP layers call these."""
