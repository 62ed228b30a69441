"""Request dependencies: settings, storage, database sessions and the caller's identity."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Annotated, TypeVar

from fastapi import Depends, HTTPException, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from services.api.settings import ApiSettings
from services.common.auth import owner_id_for_key
from services.common.storage import Storage


def get_settings(request: Request) -> ApiSettings:
    return request.app.state.settings


def get_storage(request: Request) -> Storage:
    return request.app.state.storage


READ_METHODS = frozenset({"GET", "HEAD"})


async def get_session(request: Request) -> AsyncIterator[Session]:
    """A session per request; the endpoint commits what it means to keep. GET and HEAD read only
    and get an autocommit session (db.make_read_session_factory).

    Async, though the endpoints are not: making a Session does no I/O (it connects at its first
    query, in the endpoint's thread), so only the close needs a thread, one hop instead of two for
    a sync generator. The status poll is the API's hottest path."""
    state = request.app.state
    factory = state.read_session_factory if request.method in READ_METHODS else state.session_factory
    session = factory()
    try:
        yield session
    finally:
        await run_in_threadpool(session.close)


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail, headers={"WWW-Authenticate": "Bearer"})


_bearer = HTTPBearer(auto_error=False, description="an API key from `diffii admin create-key`")


def _owner_id(request: Request, session: Session, credentials: HTTPAuthorizationCredentials | None) -> str:
    if credentials is None:
        if request.headers.get("authorization"):
            raise _unauthorized("malformed Authorization header: expected 'Bearer <key>'")
        raise _unauthorized("missing API key: send 'Authorization: Bearer <key>'")
    owner_id = owner_id_for_key(session, credentials.credentials.strip())
    if owner_id is None:
        raise _unauthorized("invalid or revoked API key")
    return owner_id


def current_owner_id(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    session: Annotated[Session, Depends(get_session)],
) -> str:
    """The owner id behind `Authorization: Bearer <key>`; 401 for a missing, unknown or revoked key.

    The key is checked on the request's own session (FastAPI gives the endpoint the same one): one
    connection checkout and transaction per request instead of two, which is most of a status
    poll's cost."""
    return _owner_id(request, session, credentials)


def uploading_owner_id(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> str:
    """current_owner_id for the upload: a session of its own, closed before the body is read, so
    a long upload holds no connection and no open transaction."""
    with request.app.state.session_factory() as session:
        return _owner_id(request, session, credentials)


T = TypeVar("T")
CredentialsDep = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


async def as_owner(
    request: Request, credentials: HTTPAuthorizationCredentials | None, read: Callable[[Session, str], T]
) -> T:
    """`read(session, owner_id)` on a read session, the key checked first, all in one worker-thread
    hop. For the hottest path, the status poll: a sync OwnerDep, a sync endpoint and the session's
    close are three hops, each a thread wake-up and a GIL hand-off under load."""

    def run() -> T:
        with request.app.state.read_session_factory() as session:
            return read(session, _owner_id(request, session, credentials))

    return await run_in_threadpool(run)


SessionDep = Annotated[Session, Depends(get_session)]
OwnerDep = Annotated[str, Depends(current_owner_id)]
UploaderDep = Annotated[str, Depends(uploading_owner_id)]
SettingsDep = Annotated[ApiSettings, Depends(get_settings)]
StorageDep = Annotated[Storage, Depends(get_storage)]
