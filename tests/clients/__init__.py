"""Real registry clients (docker, podman, skopeo, containerd, oras-py, python-dxf) against Berth."""
