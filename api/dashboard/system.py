"""Pages about Tally itself: Health, the Audit log and the Operators."""

from starlette.responses import RedirectResponse, Response

from api.dashboard.access import PREFIX, Visit, change, page
from api.health import report
from engine.errors import TallyError
from engine.operators.passwords import generate_password
from engine.operators.service import ROLES

AUDIT_PAGE = 100


@page
async def health(visit: Visit) -> Response:
    app = await visit.app()
    state = await report(visit.engine)
    try:
        last = await visit.run(visit.engine.ledger.last_report)
    except TallyError:
        last = None
    return visit.render("health.html", app=app, tab="health", state=state, last=last)


@page
async def audit(visit: Visit) -> Response:
    before = visit.request.query_params.get("before", "")
    entries = await visit.run(
        visit.engine.audit.page, AUDIT_PAGE + 1, int(before) if before.isdigit() else None
    )
    more = entries[AUDIT_PAGE - 1].audit_id if len(entries) > AUDIT_PAGE else None
    return visit.render("audit.html", entries=entries[:AUDIT_PAGE], more=more)


@page
async def operators(visit: Visit) -> Response:
    return await _operators(visit)


@change
async def create_operator(visit: Visit) -> Response:
    email, role = visit.form.get("email", ""), visit.form.get("role", "viewer")
    password = generate_password()
    try:
        operator = await visit.run(visit.engine.operators.create, email, password, role)
    except TallyError as exc:
        return await _operators(visit, error=exc.message, status=400)
    await visit.audit("operator.created", email=operator.email, role=operator.role)
    return await _operators(visit, created=(operator.email, password), status=201)


@change
async def disable_operator(visit: Visit) -> Response:
    email = visit.form.get("email", "")
    operator = await visit.run(visit.engine.operators.disable, email)
    await visit.audit("operator.disabled", email=operator.email)
    return RedirectResponse(f"{PREFIX}/operators", status_code=303)


async def _operators(
    visit: Visit,
    *,
    created: tuple[str, str] | None = None,
    error: str | None = None,
    status: int = 200,
) -> Response:
    listed = await visit.run(visit.engine.operators.list)
    return visit.render(
        "operators.html",
        status,
        operators=listed,
        roles=ROLES,
        created=created,
        error=error,
    )
