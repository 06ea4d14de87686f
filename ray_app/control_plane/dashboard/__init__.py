"""The dashboard: server-rendered pages with small JavaScript modules, served by the
control plane at / (same process, same token), charts by the Plotly.js that the
installed `plotly` package ships (no CDN: the pages work offline). The pages read
and change everything through the control plane's API and follow runs through its
Server-Sent Events streams.

With a token set, a browser signs in once at /login: the token goes into an
HttpOnly cookie that the API accepts (EventSource cannot send headers).
"""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

import plotly
from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from ray_app.control_plane.deps import TOKEN_COOKIE
from ray_app.control_plane.service import ControlPlane, InvalidName
from ray_app.errors import NotFound

PAGES = Path(__file__).parent / "pages"
STATIC = Path(__file__).parent / "static"
PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"

pages = Jinja2Templates(directory=str(PAGES))
router = APIRouter(include_in_schema=False)
static_files = StaticFiles(directory=str(STATIC))


def _plane(request: Request) -> ControlPlane:
    return request.app.state.plane


def _signed_in(request: Request) -> bool:
    expected = _plane(request).settings.token_value
    if expected is None:
        return True
    given = request.cookies.get(TOKEN_COOKIE, "")
    return bool(given) and hmac.compare_digest(given.encode(), expected.encode())


def _page(request: Request, template: str, title: str, active: str, status_code: int = 200, **context: Any) -> Response:
    if not _signed_in(request):
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)
    token_required = _plane(request).settings.token_value is not None
    return pages.TemplateResponse(
        request, template, {"title": title, "active": active, "token_required": token_required, **context},
        status_code=status_code,
    )


@router.get("/")
def runs_page(request: Request) -> Response:
    return _page(request, "runs.html", "Runs", "runs")


@router.get("/launch")
def launch_page(request: Request) -> Response:
    return _page(request, "launch.html", "Launch a run", "launch")


def _run_page(request: Request, name: str, template: str, title: str) -> Response:
    # The page's status says whether the run exists, so a link to a run that does not is
    # a 404 a browser, a crawler or a test can see (not an empty page of panels).
    try:
        _plane(request).require_run(name)
    except InvalidName as exc:
        return _page(request, "missing.html", "Not found", "runs", status_code=400, message=str(exc))
    except NotFound as exc:
        return _page(request, "missing.html", "Not found", "runs", status_code=404,
                     message=f"{exc}. Every run is on the Runs page.")
    return _page(request, template, title, "runs", run=name)


@router.get("/runs/{name}")
def run_page(request: Request, name: str) -> Response:
    return _run_page(request, name, "run.html", name)


@router.get("/runs/{name}/review")
def review_page(request: Request, name: str) -> Response:
    return _run_page(request, name, "review.html", f"Review {name}")


@router.get("/compare")
def compare_page(request: Request, names: str = "") -> Response:
    return _page(request, "compare.html", "Compare runs", "runs", names=names)


@router.get("/families")
def families_page(request: Request) -> Response:
    return _page(request, "families.html", "Model families", "families")


@router.get("/templates")
def templates_page(request: Request) -> Response:
    return _page(request, "templates.html", "Templates", "templates")


def _safe_next(target: str | None) -> str:
    # Only a path of this site: never an absolute or scheme-relative URL.
    return target if target and target.startswith("/") and not target.startswith("//") else "/"


def _login_form(request: Request, target: str, error: str | None = None, status_code: int = 200) -> Response:
    return pages.TemplateResponse(
        request, "login.html",
        {"title": "Sign in", "active": "", "next": target, "error": error, "token_required": True},
        status_code=status_code,
    )


@router.get("/login")
def login_page(request: Request, next: str = "/") -> Response:  # noqa: A002 - the query parameter's name
    return _login_form(request, _safe_next(next))


@router.post("/login")
async def login(request: Request) -> Response:
    """The sign-in form (urlencoded: token, next); the token becomes an HttpOnly cookie."""
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    token = (form.get("token") or [""])[0].strip()
    target = _safe_next((form.get("next") or ["/"])[0])
    expected = _plane(request).settings.token_value
    if expected is not None and not hmac.compare_digest(token.encode(), expected.encode()):
        return _login_form(
            request, target,
            "That token is not this server's. It is the value of RAY_APP_SERVER_TOKEN where the server runs.", 401,
        )
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict", path="/")
    return response


@router.post("/logout")
def logout() -> Response:
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(TOKEN_COOKIE, path="/")
    return response


@router.get("/static/vendor/plotly.min.js")
def plotly_js() -> FileResponse:
    return FileResponse(PLOTLY_JS, media_type="text/javascript", headers={"Cache-Control": "public, max-age=86400"})

