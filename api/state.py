"""What routes reach through the request: the process's engine and its job queue."""

from starlette.requests import Request

from engine.container import Engine
from engine.models import AppContext
from workers.queue import Jobs


def engine_of(request: Request) -> Engine:
    built: Engine = request.app.state.engine
    return built


async def authenticated(request: Request) -> tuple[Engine, AppContext]:
    """The engine, and the app whose API key the request carries."""
    engine = engine_of(request)
    return engine, await engine.keys.authenticate(request.headers.get("authorization"))


def jobs_of(request: Request) -> Jobs:
    queue: Jobs = request.app.state.jobs
    return queue
