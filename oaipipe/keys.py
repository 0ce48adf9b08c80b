"""Which API key a backend sends, and to whom: decided here, and nowhere else.

The rule
--------

* A key the pipeline names (``api_key:`` of the backend or ``train:`` block, ``--api-key-env VAR`` of
  ``ask``/``models``/``describe``) is sent to that block's server, whatever it is.
* Otherwise ``OPENAI_API_KEY`` from the environment, **only** when calls go to OpenAI itself:
  ``base_url`` unset, or a URL whose scheme is ``https`` and whose host is exactly ``api.openai.com``
  (see :func:`is_openai_url`). Any other server gets no key at all.

:func:`is_openai_url` parses the URL (``urllib.parse``); it never looks for a substring. It refuses,
on purpose: ``http://``; a user name or password (``https://api.openai.com@host/``); a port other than
443; a trailing dot (``api.openai.com.``); look-alike hosts (``api.openai.com.evil.test``); the name in
the path or query (``http://host/api.openai.com/v1``, ``?h=api.openai.com``); and any URL holding a
backslash, a space or a control character, since HTTP clients and ``urllib`` disagree about where the
host of such a URL ends. Upper case is accepted (``HTTPS://API.OPENAI.COM/v1``): host names are not
case-sensitive, so that is the same host.

The official SDK reads ``OPENAI_API_KEY``, ``OPENAI_BASE_URL``, ``OPENAI_ORG_ID``, ``OPENAI_PROJECT_ID``
(and in newer versions more) from the environment whenever an argument is left out: every SDK client
oaipipe makes is built by :func:`sdk_client`, which always passes the key and the URL and resets what the
SDK took from the environment on its own. The HTTP backends' options read ``OPENAI_BASE_URL``,
``OPENAI_ORG_ID`` and ``OPENAI_PROJECT_ID`` themselves (when the pipeline leaves ``base_url`` /
``organization`` / ``project`` unset), so the rule above decides the key for that URL like for any other.

URLs
----

Every endpoint URL is made by :func:`endpoint_url`: the endpoint's path joins ``base_url``'s *path*, and
``base_url``'s query string (``?api-version=...``, as Azure-style servers want) is kept and sent with every
call; SDK clients get it as ``default_query`` (:func:`split_base_url`). A ``base_url`` with a fragment
(``#...``) is refused when the pipeline is validated (:func:`check_base_url`).

Redirects are followed within the origin only (scheme, host, port): a redirect to another server is
refused with an error naming both (:func:`check_redirect`, checked by every transport before it follows),
since HTTP clients drop only ``Authorization`` on the way and would carry the pipeline's ``headers:``, the
organization and project, and the prompts there.

A key the server refused (HTTP 401) is never sent again by that backend, and the first request of a
backend goes alone, so that a wrong key costs one request, not one per worker: :class:`KeyGate`.

Every key resolved here is registered with :func:`oaipipe.errors.register_secret`, so it is masked in
every message, log and file oaipipe writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import re
import threading
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar
from urllib.parse import parse_qsl, urljoin, urlsplit, urlunsplit

from pydantic import AfterValidator

from .errors import AuthenticationError, BackendError, register_secret

__all__ = [
    "NO_KEY_PLACEHOLDER",
    "BaseURL",
    "OPENAI_BASE_URL",
    "OPENAI_HOST",
    "KeyGate",
    "check_base_url",
    "check_redirect",
    "too_many_redirects",
    "endpoint_url",
    "is_openai_host",
    "is_openai_url",
    "refusal_hint",
    "resolve_api_key",
    "sdk_client",
    "split_base_url",
]

T = TypeVar("T")

OPENAI_HOST = "api.openai.com"
OPENAI_BASE_URL = "https://api.openai.com/v1"

#: sent where the SDK insists on a key but the server gets none (a custom base_url without api_key)
NO_KEY_PLACEHOLDER = "sk-no-key"

# clients and urllib disagree about where the host ends when a URL holds these (WHATWG reads "\" as "/")
_AMBIGUOUS = re.compile(r"[\x00-\x20\x7f\\]")
_OPENAI_NETLOCS = frozenset({OPENAI_HOST, f"{OPENAI_HOST}:443"})


def is_openai_url(base_url: str | None) -> bool:
    """True when calls to ``base_url`` go to OpenAI itself: unset, or ``https://api.openai.com[:443]/...``.

    The URL is parsed, never searched: see the module docstring for what is refused and why.
    """
    if base_url is None or base_url == "":
        return True  # the transports' default: https://api.openai.com/v1
    text = str(base_url)
    if _AMBIGUOUS.search(text):
        return False
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError:
        return False
    return parts.scheme.lower() == "https" and parts.netloc.lower() in _OPENAI_NETLOCS


#: the name the transports used before; same rule
is_openai_host = is_openai_url


# --- the one way an endpoint's URL is made from base_url ----------------------------------------


def check_base_url(value: str | None, *, name: str = "base_url") -> str | None:
    """``value`` when it can serve as a ``base_url``, else a ``ValueError`` saying what to fix.

    A query string is kept (``?api-version=...``, as Azure-style servers want: :func:`endpoint_url` sends
    it with every call); a fragment (``#...``) is refused, since HTTP clients never send it and whatever
    the user meant by it would silently not happen."""
    if value is None:
        return None
    if "#" in str(value):
        kept = str(value).split("#", 1)[0]
        raise ValueError(f"{name} {value!r} has a fragment (#...), which is never sent to a server; "
                         f"remove it: {kept!r} (a query string such as ?api-version=... is kept and sent)")
    return value


#: the type of a ``base_url`` option: a URL string that :func:`check_base_url` accepts
BaseURL = Annotated[str, AfterValidator(check_base_url)]


def split_base_url(base_url: str | None) -> tuple[str, dict[str, str]]:
    """``base_url`` (OpenAI's when unset) as (the URL without its query and trailing ``/``, the query's
    parameters). For clients that take the query apart (the SDK's ``default_query``)."""
    parts = urlsplit(str(base_url or OPENAI_BASE_URL))
    bare = urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))
    return bare, dict(parse_qsl(parts.query, keep_blank_values=True))


def endpoint_url(base_url: str | None, path: str) -> str:
    """The URL of the endpoint ``path`` (``/chat/completions``, ``files/f-1?x=y``) below ``base_url``:
    ``path`` joins the base URL's *path*, and the base URL's query (``?api-version=...``) is kept, ahead
    of the endpoint's own query. Every transport builds its URLs here."""
    parts = urlsplit(str(base_url or OPENAI_BASE_URL))
    tail = urlsplit(path)
    joined = parts.path.rstrip("/") + "/" + tail.path.lstrip("/")
    query = "&".join(q for q in (parts.query, tail.query) if q)
    return urlunsplit((parts.scheme, parts.netloc, joined, query, ""))


def _secret_value(secret: Any) -> str | None:
    if secret is None:
        return None
    value = secret.get_secret_value() if hasattr(secret, "get_secret_value") else str(secret)
    value = value.strip()
    return value or None


def resolve_api_key(options: Any) -> str | None:
    """The key for a block's options (``api_key``, ``base_url``), or ``None`` when that server gets none.

    ``api_key`` when the block names one; else ``OPENAI_API_KEY`` when :func:`is_openai_url`; else ``None``.
    """
    named = _secret_value(getattr(options, "api_key", None))
    if named is not None:
        register_secret(named)
        return named
    if is_openai_url(getattr(options, "base_url", None)):
        env = os.environ.get("OPENAI_API_KEY", "").strip()
        if env:
            register_secret(env)
            return env
    return None


def refusal_hint(url: str = "", *, key_sent: bool = True, unset_var: str | None = None) -> str:
    """What to do about a 401 from ``url``: depends on whether a key was sent and where it came from."""
    openai = is_openai_url(url)
    if unset_var:
        return (f"no key was sent: the backend's api_key is ${{env:{unset_var}}}, and {unset_var} is not set; "
                f"export {unset_var}=... (or remove the api_key line if this server needs no key)")
    if not key_sent:
        if openai:
            return ("no key was sent: export OPENAI_API_KEY=..., or name one with `api_key: ${env:MY_KEY}` "
                    "in the backend block")
        return ("no key was sent: this server does not get OPENAI_API_KEY (only https://api.openai.com does); "
                "give it its own key with `api_key: ${env:MY_KEY}` in the backend block (or "
                "--set backend.api_key='${env:MY_KEY}'; --api-key-env MY_KEY for `oaipipe ask/models/describe`)")
    if openai:
        return ("set another key with `export OPENAI_API_KEY=...`, or give this backend its own key with "
                "`api_key: ${env:MY_KEY}` in the backend block")
    return ("this server refused the key the pipeline names for it (it never gets OPENAI_API_KEY); check the "
            "variable behind `api_key:` in the backend block (--api-key-env for `oaipipe ask/models/describe`)")


# --- redirects: followed within the origin only ---------------------------------------------------

_DEFAULT_PORTS = {"http": 80, "https": 443}


def origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) of ``url``, lower case, the port filled in for http and https."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    return scheme, (parts.hostname or "").lower(), port if port is not None else _DEFAULT_PORTS.get(scheme)


def check_redirect(url: str, location: str, status: int | None = None) -> str:
    """The URL a redirect from ``url`` to ``location`` leads to, when it may be followed: only within the
    same origin (scheme, host and port). A redirect to another origin raises a :class:`BackendError`
    naming both ends: following it would carry the request's headers (``headers:``, ``OpenAI-Organization``,
    ``OpenAI-Project``; HTTP clients drop only ``Authorization``) and its body (the prompts) to a server the
    pipeline never named. Every transport checks a redirect here before following it."""
    target = urljoin(url, location)
    if origin(target) == origin(url):
        return target
    from .errors import redact

    start, end = origin(url), origin(target)
    where = f"{end[0]}://{end[1]}" + (f":{end[2]}" if end[2] != _DEFAULT_PORTS.get(end[0]) else "")
    err = BackendError(
        f"{redact(url)} answered HTTP {status or '3xx'} redirecting to another server ({redact(target)}); "
        f"oaipipe does not follow redirects across servers (the request's headers and prompts would go where "
        f"the pipeline never sent them)",
        status=status,
        hint=f"if {where} is the server you mean, point base_url at it directly"
             + (f" ({end[0]} instead of {start[0]})" if start[1] == end[1] and start[0] != end[0] else ""),
    )
    err.retryable = False  # type: ignore[misc]
    raise err


def too_many_redirects(url: str, exc: BaseException) -> BackendError:
    """A redirect loop (or a chain longer than the HTTP client follows) as a :class:`BackendError` that is
    not retried: the server answered, so it is neither a connection failure nor transient, and retrying
    repeats every hop of the loop."""
    from .errors import redact

    err = BackendError(
        f"{redact(url)} keeps redirecting ({type(exc).__name__}: {redact(str(exc)) or 'a redirect loop'}); the "
        f"request never reached an answer",
        hint="the server's redirects loop: check backend.base_url (the path, e.g. a missing or extra /v1, "
             "http instead of https) against the server's own address",
    )
    err.retryable = False  # type: ignore[misc]
    return err


def _refuse_cross_origin(response: Any) -> None:
    """An httpx response hook: a redirect answer to another origin raises (:func:`check_redirect`)."""
    location = response.headers.get("location") if response.is_redirect else None
    if location:
        check_redirect(str(response.request.url), location, response.status_code)


async def _arefuse_cross_origin(response: Any) -> None:
    _refuse_cross_origin(response)


def _guard_redirects(client: Any) -> None:
    """Add the cross-origin redirect check to an SDK client's HTTP client (it follows redirects)."""
    http: Any = getattr(client, "_client", None)
    hooks = getattr(http, "event_hooks", None)
    if not isinstance(hooks, dict):  # pragma: no cover - an SDK without an httpx client
        return
    asynchronous = inspect.iscoroutinefunction(getattr(http, "send", None))
    hooks = {name: list(value) for name, value in hooks.items()}
    hooks.setdefault("response", []).append(_arefuse_cross_origin if asynchronous else _refuse_cross_origin)
    http.event_hooks = hooks


# --- SDK clients --------------------------------------------------------------------------------

#: attributes the SDK fills from OPENAI_* variables when the argument is None; reset to what we passed
_SDK_ENV_ATTRIBUTES = ("organization", "project", "admin_api_key", "webhook_secret")


def sdk_client(factory: Callable[..., T], *, api_key: str | None, base_url: str | None,
               organization: str | None = None, project: str | None = None,
               default_headers: dict[str, str] | None = None, **kwargs: Any) -> T:
    """An ``openai.OpenAI``/``AsyncOpenAI`` (``factory``) that uses only what it is given.

    ``api_key`` ``None`` sends :data:`NO_KEY_PLACEHOLDER` (the SDK wants a key), ``base_url`` ``None``
    means OpenAI's own URL; both are always passed, so the SDK never reads ``OPENAI_API_KEY`` or
    ``OPENAI_BASE_URL``. A query string of ``base_url`` (``?api-version=...``) goes to ``default_query``,
    so that it is sent with every call (:func:`split_base_url`). What it still takes from the environment by itself (organization, project, admin
    key, webhook secret, custom headers) is reset to the arguments afterwards.
    """
    url, query = split_base_url(base_url)  # the SDK appends paths to the query otherwise: see endpoint_url
    if query:
        kwargs["default_query"] = {**query, **(kwargs.get("default_query") or {})}
    key = api_key or NO_KEY_PLACEHOLDER
    headers = dict(default_headers or {})
    client = factory(api_key=key, base_url=url, organization=organization, project=project,
                     default_headers=headers or None, **kwargs)
    given = {"organization": organization, "project": project, "admin_api_key": None, "webhook_secret": None}
    for name in _SDK_ENV_ATTRIBUTES:
        if hasattr(client, name):
            setattr(client, name, given[name])
    if hasattr(client, "_custom_headers"):  # OPENAI_CUSTOM_HEADERS of newer SDKs: only ours
        client._custom_headers = headers
    if hasattr(client, "_ambient_authorizations"):
        client._ambient_authorizations = frozenset()
    _guard_redirects(client)
    if getattr(client, "api_key", key) != key:  # pragma: no cover - an SDK that ignores api_key=
        raise RuntimeError("the openai SDK did not take the API key it was given")
    return client


# --- the gate: one probe first, never again after a 401 ------------------------------------------


class KeyGate:
    """Lets a backend's HTTP requests through, and stops them once its key was refused.

    * Until one request got an answer from the server, requests go **one at a time**: if the key is wrong,
      only that one request carries it, whatever the concurrency (the others wait, then fail without
      sending anything).
    * Any HTTP answer other than 401 opens the gate for everyone (403, 404, 429, 5xx: the server did not
      refuse the key). No answer at all (timeout, refused connection) lets the next waiter try.
    * A 401 closes it for good: every request, waiting or new, sync or async, fails at once with that error.

    :meth:`call` wraps one blocking attempt, :meth:`acall` one async attempt. Both may be used on the
    same gate from threads and event loops at once.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._open = False
        self._probing = False
        self._refused: AuthenticationError | None = None
        self._async_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    @property
    def refused(self) -> AuthenticationError | None:
        return self._refused

    def check(self) -> None:
        """Raise the refusal when the key was refused already."""
        refused = self._refused
        if refused is not None:
            raise AuthenticationError(refused.message, status=refused.status, request_id=refused.request_id,
                                      hint=refused.hint)

    # --- state, under the lock ---

    def _try_enter(self) -> bool | None:
        """True: go as the probe; False: go (the gate is open); None: wait. Raises when refused."""
        self.check()
        if self._open:
            return False
        if not self._probing:
            self._probing = True
            return True
        return None

    def _settle(self, probe: bool, error: BaseException | None) -> None:
        with self._lock:
            if isinstance(error, AuthenticationError) and error.status == 401:
                if self._refused is None:
                    self._refused = error
            elif error is None or (isinstance(error, BackendError) and error.status is not None):
                self._open = True
            if probe:
                self._probing = False
            self._cond.notify_all()
            waiters, self._async_waiters = self._async_waiters, []
        for loop, future in waiters:
            with contextlib.suppress(RuntimeError):  # that loop closed meanwhile: nobody waits there
                loop.call_soon_threadsafe(_wake, future)

    # --- entry points ---

    def call(self, attempt: Callable[[], T]) -> T:
        """Run one blocking attempt through the gate."""
        with self._lock:
            while (probe := self._try_enter()) is None:
                self._cond.wait()
        try:
            result = attempt()
        except BaseException as exc:
            self._settle(probe, exc)
            raise
        self._settle(probe, None)
        return result

    async def acall(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """Run one async attempt through the gate."""
        loop = asyncio.get_running_loop()
        while True:
            with self._lock:
                probe = self._try_enter()
                if probe is None:
                    future: asyncio.Future[None] = loop.create_future()
                    self._async_waiters.append((loop, future))
            if probe is not None:
                break
            await future
        try:
            result = await attempt()
        except BaseException as exc:
            self._settle(probe, exc)
            raise
        self._settle(probe, None)
        return result


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
