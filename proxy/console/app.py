"""The review console: `/console` pages on the gateway (Starlette, server-rendered).

Every page needs a session (else a redirect to sign-in); every POST needs the session's
CSRF token (else 403); admin-only actions (playground, policy reload) answer 403 to a
reviewer. Pages carry a strict Content-Security-Policy (scripts and styles from /console
only, nothing inline) and audited text is rendered escaped, never as markup.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from contextlib import closing
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

import orjson
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from proxy import reviews
from proxy.audit_backends import ensure_schema, open_writable, store_errors
from proxy.audit_cli import flagged
from proxy.audit_store import AuditQueryError, StoreMissing, open_reader
from proxy.console import charts, store
from proxy.console.limits import SignInLimit
from proxy.console.session import (
    COOKIE,
    COOKIE_SECURE_ENV,
    LOGIN_COOKIE,
    Session,
    Sessions,
    same_token,
    secure_cookie,
)
from proxy.guard.safeguard import ClassifierError
from proxy.policies import Policy, PolicyError, parse_policy

HERE = Path(__file__).parent
_TRACE_ID = re.compile(r"[0-9a-f]{32}")
MAX_FORM = 256 * 1024
READERS_KEPT = 4
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
    " object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"no-store"),
]
WINDOWS = {"24h": 24, "7d": 24 * 7, "30d": 24 * 30}

log = logging.getLogger("proxy.console")


class StoreUnavailable(Exception):
    """The audit store cannot be reached (PostgreSQL down, a locked or broken file)."""


Handler = Callable[[Request, Session], Awaitable[Response]]


def _templates() -> Environment:
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = lambda t: (
        time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t)) if isinstance(t, int | float) else "-"
    )
    env.filters["json"] = lambda v: orjson.dumps(v, option=orjson.OPT_INDENT_2).decode()
    env.globals["flagged"] = flagged
    return env


def secure_headers(app: Any) -> Any:
    """ASGI wrapper adding the console's security headers to every response."""

    async def wrapped(scope: dict, receive: Any, send: Any) -> None:
        async def sending(message: dict) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await app(scope, receive, sending)

    return wrapped


class Console:
    def __init__(self, gateway: Any) -> None:
        self.gw = gateway
        config = gateway.config
        self.sessions = Sessions(config.admin_keys, config.reviewer_keys)
        self.audit = config.audit  # SQLite at audit.path, or PostgreSQL at audit.url
        self.trace_url = config.telemetry.trace_url
        self.env = _templates()
        self._schema_ready = False
        self._readers: list[Any] = []  # idle PostgreSQL read connections (list ops are atomic)
        self._errors = store_errors(self.audit)
        self.limit = SignInLimit()

    # -- plumbing ----------------------------------------------------------------------

    def page(self, request: Request, name: str, status: int = 200, **context: Any) -> Response:
        session = request.scope.get("console_session")
        html = self.env.get_template(name).render(
            session=session, base=request.scope.get("root_path", ""), **context
        )
        return HTMLResponse(html, status_code=status)

    def url(self, request: Request, path: str, params: dict | None = None) -> str:
        root = request.scope.get("root_path", "")
        return f"{root}{path}" + (f"?{urlencode(params)}" if params else "")

    async def read(self, work: Callable[[Any], Any]) -> Any:
        """Run `work` on a read-only connection in a thread; None when there is no store
        (raises StoreUnavailable when it cannot be reached)."""

        def run() -> Any:
            self._ensure_schema()
            conn = self._readers.pop() if self._readers else open_reader(self.audit)
            try:
                result = work(conn)
            except BaseException:
                conn.close()  # a broken connection is not handed out again
                raise
            if self.audit.url and len(self._readers) < READERS_KEPT:
                self._readers.append(conn)  # a PostgreSQL connection costs ~15 ms to open
            else:
                conn.close()
            return result

        try:
            return await asyncio.to_thread(run)
        except StoreMissing:
            return None
        except self._errors as exc:
            log.warning("console: audit store unavailable (%s)", type(exc).__name__)
            raise StoreUnavailable from None

    def _ensure_schema(self) -> None:
        """The store's schema (reviews included) at its current version, once it exists."""
        if not self._schema_ready:
            self._schema_ready = ensure_schema(self.audit)

    def gate(self, handler: Handler, *, admin: bool = False) -> Callable[[Request], Awaitable]:
        """Session (else sign-in), CSRF token on POST (else 403), admin role where needed."""

        async def endpoint(request: Request) -> Response:
            if not self.sessions:
                return Response("The review console is disabled (no admin keys).", 404)
            try:
                session = await self._session(request)
                if session is None:
                    return self._to_sign_in(request)
                request.scope["console_session"] = session
                if request.method == "POST":
                    form = await self.form(request)
                    if form is None or not same_token(session.csrf, form.get("csrf")):
                        return self.page(
                            request, "error.html", 403, message="Missing or bad CSRF token."
                        )
                    request.scope["console_form"] = form
                if admin and not session.admin:
                    return self.page(request, "error.html", 403, message="Admins only.")
                return await handler(request, session)
            except StoreUnavailable:
                return self.page(
                    request, "error.html", 503, message="The audit store cannot be reached."
                )

        return endpoint

    def _to_sign_in(self, request: Request) -> Response:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        if request.method != "GET":  # a form can't be re-sent after sign-in
            target = self.url(request, "/decisions")
        return RedirectResponse(self.url(request, "/login", {"next": target}), status_code=303)

    async def _session(self, request: Request) -> Session | None:
        """The cookie's session unless it was signed out (on any worker: the store says)."""
        session = self.sessions.session(request.cookies.get(COOKIE))
        if session is None:
            return None
        if await self.read(lambda conn: store.signed_out(conn, session.id)):
            return None
        return session

    @staticmethod
    async def form(request: Request) -> dict[str, str] | None:
        """An urlencoded form (the console's only kind), or None when it is not one."""
        if not request.headers.get("content-type", "").startswith(
            "application/x-www-form-urlencoded"
        ):
            return None
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_FORM:
                return None
        parsed = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
        return {k: v[0] for k, v in parsed.items()}

    # -- sign-in -----------------------------------------------------------------------

    async def login(self, request: Request) -> Response:
        if not self.sessions:
            return Response("The review console is disabled (no admin keys).", 404)
        target = _local(request.query_params.get("next"), self.url(request, "/decisions"))
        error = ""
        if request.method == "POST":
            form = await self.form(request) or {}
            nonce = request.cookies.get(LOGIN_COOKIE)
            client = request.client.host if request.client else None
            key = form.get("key", "")
            # A limited address is refused before its key is checked; a limited key
            # prefix only refuses wrong keys (below), so others' failures at the admins'
            # prefix cannot lock the admins out.
            if wait := self.limit.retry_after(client):
                return self._too_many(request, wait)
            if not self.sessions.check_login_token(nonce, form.get("csrf")):
                error = "The sign-in form expired; try again."
                if nonce is None and self._secure(request) and request.url.scheme == "http":
                    error += (
                        " Browsers keep this console's Secure cookies only over https: serve"
                        f" it over https (or set {COOKIE_SECURE_ENV}=0 on a private network)."
                    )
            elif cookie := self.sessions.sign_in(key):
                response = RedirectResponse(_local(form.get("next"), target), status_code=303)
                self._cookie(request, response, COOKIE, cookie, self.sessions.max_age_s)
                self._drop_cookie(request, response, LOGIN_COOKIE)
                return response
            elif wait := self.limit.retry_after(client, key):
                return self._too_many(request, wait)
            else:
                self.limit.failed(client, key)
                error = "That key is not an admin or reviewer key."
        nonce = self.sessions.login_nonce()
        response = self.page(
            request,
            "login.html",
            401 if error else 200,
            error=error,
            next=target,
            csrf=self.sessions.login_token(nonce),
        )
        self._cookie(request, response, LOGIN_COOKIE, nonce, 3600)
        return response

    def _too_many(self, request: Request, wait: int) -> Response:
        response = self.page(
            request,
            "error.html",
            429,
            message=f"Too many failed sign-ins: try again in {wait} s.",
        )
        response.headers["retry-after"] = str(wait)
        return response

    def _path(self, request: Request) -> str:
        return request.scope.get("root_path", "") or "/"

    @staticmethod
    def _secure(request: Request) -> bool:
        client = request.client.host if request.client else None
        return secure_cookie(request.url.scheme, client, request.headers.get("x-forwarded-proto"))

    def _cookie(self, request: Request, response: Response, name: str, value: str, age) -> None:
        response.set_cookie(
            name,
            value,
            max_age=int(age),
            path=self._path(request),
            httponly=True,
            samesite="strict",
            secure=self._secure(request),
        )

    def _drop_cookie(self, request: Request, response: Response, name: str) -> None:
        response.delete_cookie(
            name,
            path=self._path(request),
            httponly=True,
            samesite="strict",
            secure=self._secure(request),
        )

    async def logout(self, request: Request, session: Session) -> Response:
        """Ends the session for every worker: its id is kept in the store until it would
        have expired, and a replayed cookie is refused."""

        def write() -> None:
            self._schema_ready = ensure_schema(self.audit, create=True)
            with closing(open_writable(self.audit)) as conn:
                store.sign_out(conn, session.id, session.expires, time.time())

        try:
            await asyncio.to_thread(write)
        except self._errors as exc:
            log.warning("console: sign-out not stored (%s)", type(exc).__name__)
            raise StoreUnavailable from None
        response = RedirectResponse(self.url(request, "/login"), status_code=303)
        self._drop_cookie(request, response, COOKIE)
        return response

    # -- decisions ---------------------------------------------------------------------

    async def decisions(self, request: Request, session: Session, queue: str = "") -> Response:
        query = store.Query.from_params(request.query_params, queue=queue)
        try:
            page = await self.read(lambda conn: store.decisions(conn, query))
        except AuditQueryError as exc:
            return self.page(request, "error.html", 400, message=str(exc))
        live = self.url(request, "/decisions/rows", query.params(queue=queue))
        return self.page(
            request,
            "decisions.html",
            page=page,
            query=query,
            queue=queue,
            title=store.QUEUES.get(queue, "Decisions"),
            search_rows=store.SEARCH_ROWS,
            live=live if query.page == 1 else "",
            prev_link=self._page_link(request, queue, query, query.page - 1),
            next_link=self._page_link(request, queue, query, query.page + 1),
        )

    def _page_link(self, request: Request, queue: str, query: store.Query, number: int) -> str:
        path = f"/queue/{queue}" if queue else "/decisions"
        return self.url(request, path, query.params(page=number))

    async def rows(self, request: Request, session: Session) -> Response:
        """The first page's rows alone, for live updates while traffic flows."""
        queue = request.query_params.get("queue", "")
        query = store.Query.from_params(request.query_params, queue=queue * (queue in store.QUEUES))
        try:
            page = await self.read(lambda conn: store.decisions(conn, query))
        except AuditQueryError:
            return Response(status_code=400)
        return self.page(request, "_rows.html", page=page)

    async def queue(self, request: Request, session: Session) -> Response:
        kind = request.path_params["kind"]
        if kind not in store.QUEUES:
            return self.page(request, "error.html", 404, message="No such queue.")
        return await self.decisions(request, session, queue=kind)

    async def detail(self, request: Request, session: Session) -> Response:
        row_id = request.path_params["row"]
        found = await self.read(lambda conn: store.request(conn, row_id))
        if found is None:
            return self.page(request, "error.html", 404, message="No such request.")
        record, marks = found
        trace = record.get("trace_id")
        link = ""
        if self.trace_url and isinstance(trace, str) and _TRACE_ID.fullmatch(trace):
            link = self.trace_url.replace("{trace_id}", trace)
        return self.page(
            request,
            "request.html",
            row=row_id,
            record=record,
            marks=marks,
            trace_link=link,
            saved=request.query_params.get("saved"),
        )

    async def review(self, request: Request, session: Session) -> Response:
        row_id = request.path_params["row"]
        form = request.scope["console_form"]
        verdict = form.get("verdict", "")
        if not verdict.isdigit():
            return self.page(request, "error.html", 400, message="No verdict chosen.")

        def write() -> reviews.Review:
            self._ensure_schema()
            with closing(open_writable(self.audit)) as conn:
                return reviews.save(
                    conn,
                    row_id,
                    int(verdict),
                    form.get("mark", ""),
                    form.get("note", ""),
                    session.who,
                )

        try:
            await asyncio.to_thread(write)
        except reviews.ReviewError as exc:
            return self.page(request, "error.html", 400, message=str(exc))
        except self._errors as exc:
            log.warning("console: review not stored (%s)", type(exc).__name__)
            raise StoreUnavailable from None
        target = self.url(request, f"/requests/{row_id}", {"saved": verdict})
        return RedirectResponse(f"{target}#verdict-{verdict}", status_code=303)

    async def export(self, request: Request, session: Session) -> Response:
        """Reviewed cases as JSON lines (`policy test --cases` reads the file as it is)."""
        policy = request.query_params.get("policy") or None

        def cases(conn: Any) -> list[dict]:
            return list(reviews.export_cases(conn, policy=policy))

        found = await self.read(cases) or []
        name = f"reviewed-{policy or 'all'}.jsonl".replace("/", "_")
        return StreamingResponse(
            iter([orjson.dumps(c, option=orjson.OPT_APPEND_NEWLINE) for c in found]),
            media_type="application/x-ndjson",
            headers={"content-disposition": f'attachment; filename="{name}"'},
        )

    # -- policies ----------------------------------------------------------------------

    async def policies(self, request: Request, session: Session) -> Response:
        routes = _policy_routes(self.gw.config)
        return self.page(
            request,
            "policies.html",
            policies=sorted(self.gw.policies.values(), key=lambda p: p.id),
            routes=routes,
            reloaded=request.query_params.get("reloaded"),
        )

    async def policy(self, request: Request, session: Session) -> Response:
        pid = request.path_params["policy"]
        window = request.query_params.get("window", "24h")
        hours = WINDOWS.get(window, 24)
        now_hour = int(time.time() // 3600)
        since = (now_hour - hours + 1) * 3600
        history = await self.read(lambda conn: store.policy_history(conn, pid, since))
        policy = self.gw.policies.get(pid)
        if policy is None and (history is None or not history.versions):
            return self.page(request, "error.html", 404, message="No such policy.")
        span = charts.hours_between(now_hour - hours + 1, now_hour)
        bars = charts.stacked_bars(
            f"{pid}: verdicts per hour", history.hourly if history else {}, span
        )
        line = None
        if history and history.shadow:
            line = charts.rate_line(
                f"{pid}: agreement with the enforced policies", history.agreement, span
            )
        return self.page(
            request,
            "policy.html",
            pid=pid,
            policy=policy,
            history=history,
            bars=bars,
            line=line,
            window=window,
            windows=list(WINDOWS),
            routes=_policy_routes(self.gw.config).get(pid, []),
        )

    async def playground(self, request: Request, session: Session) -> Response:
        form = request.scope.get("console_form") or {}
        chosen = form.get("policy") or request.query_params.get("policy", "")
        text = form.get("text", "")
        content = form.get("content", "")
        verdict, error = None, ""
        if request.method == "POST":
            try:
                policy = self._playground_policy(chosen, text)
                if not content.strip():
                    raise PolicyError("Give a text to classify.")
                verdict = await self.gw.classifier.classify(policy, content)
            except PolicyError as exc:
                error = str(exc)
            except ClassifierError as exc:
                error = f"classifier {exc.kind}: {exc.detail}"
        if not text and chosen in self.gw.policies:
            text = _source(self.gw.policies[chosen])
        return self.page(
            request,
            "playground.html",
            policies=sorted(self.gw.policies),
            chosen=chosen,
            text=text,
            content=content,
            verdict=verdict,
            error=error,
        )

    def _playground_policy(self, chosen: str, text: str) -> Policy:
        """The pasted policy (front matter optional), else the loaded one named."""
        if text.strip():
            return parse_policy(text.encode(), name=chosen or "playground", path="(edited)")
        if chosen in self.gw.policies:
            return self.gw.policies[chosen]
        raise PolicyError("Choose a policy or paste one.")

    async def reload(self, request: Request, session: Session) -> Response:
        ok, detail = self.gw.reload_policies()
        params = {"reloaded": "ok" if ok else detail[:300]}
        return RedirectResponse(self.url(request, "/policies", params), status_code=303)

    async def home(self, request: Request) -> Response:
        return RedirectResponse(self.url(request, "/decisions"), status_code=303)

    def app(self) -> Any:
        g = self.gate
        routes = [
            Route("/", self.home),
            Route("/login", self.login, methods=["GET", "POST"]),
            Route("/logout", g(self.logout), methods=["POST"]),
            Route("/decisions", g(self.decisions)),
            Route("/decisions/rows", g(self.rows)),
            Route("/queue/{kind}", g(self.queue)),
            Route("/requests/{row:int}", g(self.detail)),
            Route("/requests/{row:int}/review", g(self.review), methods=["POST"]),
            Route("/export.jsonl", g(self.export)),
            Route("/policies", g(self.policies)),
            Route("/policies/{policy}", g(self.policy)),
            Route("/playground", g(self.playground, admin=True), methods=["GET", "POST"]),
            Route("/reload", g(self.reload, admin=True), methods=["POST"]),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ]
        return secure_headers(Starlette(routes=routes))


def build_console(gateway: Any) -> Any:
    """The ASGI app to mount at /console."""
    return Console(gateway).app()


def _local(target: str | None, default: str) -> str:
    """Only same-site paths as redirect targets (no `//host` or scheme)."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return default


def _source(policy: Policy) -> str:
    """The policy's file as written (front matter and all) when it can be read."""
    if policy.path:
        try:
            return Path(policy.path).read_text("utf-8")
        except OSError:
            pass
    return policy.text


def _policy_routes(config: Any) -> dict[str, list[str]]:
    """policy id -> the places routes use it: `default input`, `strict output (shadow)`."""
    uses: dict[str, list[str]] = {}
    for route in config.routes.values():
        for side_name, side in (("input", route.input), ("output", route.output)):
            for refs, mark in ((side.policies, ""), (side.shadow, " (shadow)")):
                for ref in refs:
                    uses.setdefault(ref.id, []).append(f"{route.name} {side_name}{mark}")
    return uses
