"""What every HTTP handler takes from the request: the application services and the shared parameter types."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request
from litestar.params import Parameter

from service.application.services import EngramService

# Version numbers fit the database's integer column; larger ones are refused before any query.
VersionNumber = Annotated[int, Parameter(ge=1, le=2**31 - 1, description="version number")]


def svc(request: Request[Any, Any, Any]) -> EngramService:
    """The application services the app was built with (``service.http.app.create_app``)."""
    service: EngramService = request.app.state.service
    return service
