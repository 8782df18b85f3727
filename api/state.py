"""What routes reach through the request: the process's engine and its job queue."""

from starlette.requests import Request

from api.rate_limits import limited
from engine.container import Engine
from engine.models import AppContext
from workers.queue import Jobs


def engine_of(request: Request) -> Engine:
    built: Engine = request.app.state.engine
    return built


async def authenticated(request: Request) -> tuple[Engine, AppContext]:
    """The engine, and the app whose API key the request carries, within the key's rate limit."""
    engine = engine_of(request)
    app = await engine.keys.authenticate(request.headers.get("authorization"))
    if app.rate_limit is not None:
        limited(request, engine.rate_limiter.take(app.key_id, app.rate_limit))
    return engine, app


def jobs_of(request: Request) -> Jobs:
    queue: Jobs = request.app.state.jobs
    return queue
