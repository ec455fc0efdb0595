"""A small, typed client over Label Studio's documented REST API (the calls a labeling round makes).

Why not Label Studio's own SDK (`label-studio-sdk`)? It pulls pandas, numpy, OpenCV, NLTK, lxml and a
code generator into the function bundle (hundreds of MB of platform wheels, beyond what a Lambda
function bundled without Docker should carry, and numpy pins that would fight the project's). The
round needs a dozen endpoints; this module calls them with the standard library only.

* Authentication: a *personal access token* (a JWT refresh token, Label Studio 1.17+) is exchanged
  for a short-lived access token at `/api/token/refresh/` (`Authorization: Bearer ...`); a legacy
  token is sent as `Authorization: Token ...`. Which one it is shows in the token itself.
* Errors: `LabelStudioUnavailable` (connection refused, timeout, 5xx: worth a retry), and errors that
  retrying cannot fix: `LabelStudioAuthError` (401/403: wrong token), `LabelStudioNotFound` (404: e.g. a
  task deleted by hand) and `LabelStudioRequestError` (the server refused the request). Every message
  names the server, the method and path, and what the server said.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from labeling.runtime.errors import (
    ConfigurationError,
    LabelStudioAuthError,
    LabelStudioNotFound,
    LabelStudioRequestError,
    LabelStudioUnavailable,
)

DEFAULT_TIMEOUT = 30.0
PAGE_SIZE = 500  # tasks per list call
ACCESS_TOKEN_SECONDS = 240  # access tokens live 5 minutes; refresh a little before
_JWT_PARTS = 3


Opener = Callable[..., Any]


@dataclass(frozen=True)
class Task:
    id: int
    data: dict[str, Any]
    is_labeled: bool
    total_annotations: int
    cancelled_annotations: int
    annotations: tuple[dict[str, Any], ...] = ()
    predictions: tuple[dict[str, Any], ...] = ()

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Task:
        annotations = raw.get("annotations")
        predictions = raw.get("predictions")
        return cls(
            id=int(raw["id"]),
            data=dict(raw.get("data") or {}),
            is_labeled=bool(raw.get("is_labeled")),
            total_annotations=int(raw.get("total_annotations") or 0),
            cancelled_annotations=int(raw.get("cancelled_annotations") or 0),
            annotations=tuple(a for a in annotations if isinstance(a, dict)) if isinstance(annotations, list) else (),
            predictions=tuple(p for p in predictions if isinstance(p, dict)) if isinstance(predictions, list) else (),
        )

    def submitted_annotations(self) -> list[dict[str, Any]]:
        """Annotations a person submitted (skipped ones, `was_cancelled`, are not answers)."""
        return [a for a in self.annotations if not a.get("was_cancelled")]


def is_personal_access_token(token: str) -> bool:
    """Personal access tokens are JWTs (three base64url parts); legacy tokens are 40 hex digits."""
    return token.count(".") == _JWT_PARTS - 1 and all(token.split("."))


def data_filter(field: str, value: str) -> dict[str, Any]:
    """A Data Manager filter item: task data `field` equals `value`."""
    return {"filter": f"filter:tasks:data.{field}", "operator": "equal", "type": "String", "value": value}


class LabelStudioClient:
    """The REST calls of a labeling round. `opener` is `urllib.request.urlopen` (tests may wrap it)."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        opener: Opener | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigurationError(f"Label Studio URL {url!r} is not an http(s) URL")
        if not token.strip():
            raise ConfigurationError(f"the API token for Label Studio at {url} is empty")
        self.url = url.rstrip("/")
        self._token = token.strip()
        self.timeout = timeout
        self._open = opener or urllib.request.urlopen
        self._clock = clock
        self._access: tuple[str, float] | None = None

    # -- transport ----------------------------------------------------------------------------------

    def _authorization(self) -> str:
        if not is_personal_access_token(self._token):
            return f"Token {self._token}"
        now = self._clock()
        if self._access is None or self._access[1] <= now:
            answer = self._send("POST", "/api/token/refresh/", {"refresh": self._token}, authorization=None)
            access = answer.get("access") if isinstance(answer, dict) else None
            if not isinstance(access, str) or not access:
                raise LabelStudioAuthError(f"Label Studio at {self.url} gave no access token for the personal token")
            self._access = (access, now + ACCESS_TOKEN_SECONDS)
        return f"Bearer {self._access[0]}"

    def call(self, method: str, path: str, body: Any = None, *, query: Mapping[str, Any] | None = None) -> Any:
        """One API call; the decoded JSON answer (None for an empty body)."""
        if query:
            path = f"{path}?{urllib.parse.urlencode(query)}"
        return self._send(method, path, body, authorization=self._authorization())

    def _send(self, method: str, path: str, body: Any, *, authorization: str | None) -> Any:
        data = None if body is None else json.dumps(body).encode("utf-8")
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if authorization:
            headers["Authorization"] = authorization
        where = f"Label Studio at {self.url}: {method} {path.split('?', 1)[0]}"
        request = urllib.request.Request(f"{self.url}{path}", data=data, method=method, headers=headers)  # noqa: S310
        try:
            with self._open(request, timeout=self.timeout) as response:
                text = response.read().decode("utf-8")
        except urllib.error.HTTPError as error:
            detail = _detail(error)
            if error.code in (401, 403):
                raise LabelStudioAuthError(
                    f"{where}: HTTP {error.code} ({detail}); check the API token in the configured secret and that "
                    "its user may use this server"
                ) from None
            if error.code == 404:
                raise LabelStudioNotFound(f"{where}: not found ({detail})") from None
            if error.code >= 500 or error.code == 429:
                raise LabelStudioUnavailable(f"{where}: HTTP {error.code} ({detail})") from None
            raise LabelStudioRequestError(f"{where}: HTTP {error.code} ({detail})") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise LabelStudioUnavailable(f"{where}: unreachable ({reason})") from None
        if not text.strip():
            return None
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            raise LabelStudioUnavailable(f"{where}: the answer is not JSON ({text[:120]!r})") from None

    # -- server and projects --------------------------------------------------------------------------

    def version(self) -> str:
        answer = self.call("GET", "/api/version")
        return str(answer.get("release", "unknown")) if isinstance(answer, dict) else "unknown"

    def projects(self, *, title: str | None = None) -> list[dict[str, Any]]:
        """Every project this token sees (optionally only those with exactly `title`)."""
        found: list[dict[str, Any]] = []
        page = 1
        while True:
            query: dict[str, Any] = {"page": page, "page_size": 100}
            if title is not None:
                query["title"] = title
            answer = self.call("GET", "/api/projects", query=query)
            results = answer.get("results", []) if isinstance(answer, dict) else answer
            found.extend(p for p in results if title is None or p.get("title") == title)
            if not isinstance(answer, dict) or not answer.get("next"):
                return found
            page += 1

    def project(self, project_id: int) -> dict[str, Any]:
        answer: dict[str, Any] = self.call("GET", f"/api/projects/{project_id}")
        return answer

    def create_project(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        answer: dict[str, Any] = self.call("POST", "/api/projects", dict(settings))
        return answer

    def update_project(self, project_id: int, changes: Mapping[str, Any]) -> dict[str, Any]:
        answer: dict[str, Any] = self.call("PATCH", f"/api/projects/{project_id}", dict(changes))
        return answer

    # -- storage --------------------------------------------------------------------------------------

    def s3_import_storages(self, project_id: int) -> list[dict[str, Any]]:
        answer = self.call("GET", "/api/storages/s3", query={"project": project_id})
        return list(answer or [])

    def create_s3_import_storage(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        answer: dict[str, Any] = self.call("POST", "/api/storages/s3", dict(settings))
        return answer

    def update_s3_import_storage(self, storage_id: int, changes: Mapping[str, Any]) -> dict[str, Any]:
        answer: dict[str, Any] = self.call("PATCH", f"/api/storages/s3/{storage_id}", dict(changes))
        return answer

    # -- tasks ----------------------------------------------------------------------------------------

    # Answers may carry the data with storage URIs resolved to Label Studio's proxy links; the round reads
    # and writes task data as stored (`resolve_uri=false`), and keeps what it sent rather than the echo.

    def create_task(self, project_id: int, data: Mapping[str, Any]) -> Task:
        created = self.call("POST", "/api/tasks", {"project": project_id, "data": dict(data)})
        return Task.from_json({**created, "data": dict(data)})

    def task(self, task_id: int) -> Task:
        """A task with its annotations and predictions; LabelStudioNotFound when it was deleted."""
        return Task.from_json(self.call("GET", f"/api/tasks/{task_id}", query={"resolve_uri": "false"}))

    def update_task_data(self, task_id: int, data: Mapping[str, Any]) -> Task:
        updated = self.call("PATCH", f"/api/tasks/{task_id}", {"data": dict(data)})
        return Task.from_json({**updated, "data": dict(data)})

    def tasks(
        self, project_id: int, *, filters: Sequence[Mapping[str, Any]] = (), page_size: int = PAGE_SIZE
    ) -> Iterator[Task]:
        """The project's tasks (data and counts, no annotations) matching every filter, oldest first."""
        query: dict[str, Any] = {
            "project": project_id,
            "page_size": page_size,
            "fields": "task_only",
            "resolve_uri": "false",
        }
        if filters:
            query["query"] = json.dumps(
                {"filters": {"conjunction": "and", "items": list(filters)}, "ordering": ["tasks:id"]}
            )
        page = 1
        seen = 0
        while True:
            try:
                answer = self.call("GET", "/api/tasks", query={**query, "page": page})
            except LabelStudioNotFound:
                return  # the page after the last one (Django's paginator answers 404)
            tasks = answer.get("tasks", []) if isinstance(answer, dict) else []
            for raw in tasks:
                yield Task.from_json(raw)
            seen += len(tasks)
            total = int(answer.get("total", 0)) if isinstance(answer, dict) else 0
            if not tasks or seen >= total:
                return
            page += 1

    def create_prediction(
        self, task_id: int, *, result: Sequence[Mapping[str, Any]], model_version: str, score: float | None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"task": task_id, "result": list(result), "model_version": model_version}
        if score is not None:
            body["score"] = score
        answer: dict[str, Any] = self.call("POST", "/api/predictions", body)
        return answer

    def create_annotation(
        self, task_id: int, *, result: Sequence[Mapping[str, Any]], lead_time: float | None = None
    ) -> dict[str, Any]:
        """Submit an annotation as the token's user (what an annotator's Submit does)."""
        body: dict[str, Any] = {"result": list(result)}
        if lead_time is not None:
            body["lead_time"] = lead_time
        answer: dict[str, Any] = self.call("POST", f"/api/tasks/{task_id}/annotations", body)
        return answer

    # -- views (the tabs of the Data Manager) ---------------------------------------------------------

    def views(self, project_id: int) -> list[dict[str, Any]]:
        return list(self.call("GET", "/api/dm/views", query={"project": project_id}) or [])

    def create_view(self, project_id: int, data: Mapping[str, Any]) -> dict[str, Any]:
        answer: dict[str, Any] = self.call("POST", "/api/dm/views", {"project": project_id, "data": dict(data)})
        return answer


def _detail(error: urllib.error.HTTPError) -> str:
    try:
        raw = error.read(2000).decode("utf-8", "replace")
    except OSError:
        return error.reason if isinstance(error.reason, str) else "no detail"
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError:
        return " ".join(raw.split())[:300] or str(error.reason)
    if isinstance(parsed, dict):
        parts = [
            value if isinstance(value, str) else json.dumps(value)
            for value in (parsed.get(key) for key in ("detail", "validation_errors", "message"))
            if value
        ]
        if parts:
            return ": ".join(parts)[:500]
    return json.dumps(parsed)[:500]
