"""containerd's CRI ImageService, called the way a kubelet calls it (there is no kubelet here)."""

from __future__ import annotations

from dataclasses import dataclass

from cri_api.v1 import api_pb2, api_pb2_grpc

PULL_TIMEOUT = 120


@dataclass(frozen=True)
class CriImages:
    stub: api_pb2_grpc.ImageServiceStub

    def pull(self, image: str, credentials: tuple[str, str] | None = None) -> str:
        """PullImage; returns the image ref (the config digest). A kubelet sends the username
        and password of the matching pull-secret entry, and no server_address."""
        auth = None
        if credentials is not None:
            username, password = credentials
            auth = api_pb2.AuthConfig(username=username, password=password)
        request = api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=image), auth=auth)
        return str(self.stub.PullImage(request, timeout=PULL_TIMEOUT).image_ref)

    def status(self, image: str) -> api_pb2.Image:
        request = api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=image))
        image_status: api_pb2.Image = self.stub.ImageStatus(request).image
        return image_status

    def remove(self, image: str) -> None:
        self.stub.RemoveImage(api_pb2.RemoveImageRequest(image=api_pb2.ImageSpec(image=image)))
