"""What a job made, for its owner: the log (read or followed), the model archive, the plots.

Following a log holds a request thread for as long as the stream is open, so followers are bounded, per
user and overall (per API process), and a follow ends after ``follow_default_s`` unless the caller asks for
longer (at most ``follow_max_s``); beyond the bounds the answer is 429, and ``/health`` always finds a
thread. A plain read returns at most ``LOG_PAGE_BYTES`` from the offset; ``X-Log-Offset`` says where to go on.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import flask
from flask import Response, request

from appliance.server.context import (
    SERVER_NAME,
    job_dir,
    job_queue,
    own_job,
    prototype_job_id,
    require_success,
    settings,
)
from appliance.server.identity import current_owner
from appliance.server.jobdir import PLOTS
from appliance.server.openapi import operation, path_parameter, query_parameter
from appliance.server.routes_jobs import JOB_ID
from appliance.server.routes_prototype import PROTOTYPE_JOB
from appliance.server.store import Job
from servicecore.errors import NotFoundError, TooManyRequestsError
from servicecore.http import int_arg

LOG_PAGE_BYTES = 8 << 20
MAX_LOG_OFFSET = 1 << 40  # far beyond any log; larger offsets are a mistake, answered 400
FOLLOW_POLL_S = 0.5
FOLLOWERS_KEY = f"{SERVER_NAME}.followers"
LOG_ANSWER = {
    "description": "text; X-Log-Offset: the next offset, X-Job-State: the job's state",
    "content": {"text/plain": {"schema": {"type": "string"}}},
}
LOG_PARAMETERS = [
    query_parameter("offset", "start at this byte", type="integer", minimum=0, maximum=MAX_LOG_OFFSET),
    query_parameter("follow", "stream until the job ends or the follow time is up", type="boolean"),
    query_parameter("follow_s", "how long to follow at most (up to follow_max_s)", type="integer", minimum=1),
]
ARCHIVE_ANSWER = {"description": "the model bundle", "content": {"application/gzip": {}}}


class Followers:
    """How many log streams are open, per user and in all, in this API process."""

    def __init__(self, per_user: int, overall: int) -> None:
        self.per_user = per_user
        self.overall = overall
        self._lock = threading.Lock()
        self._open: Counter[str] = Counter()

    def enter(self, owner: str) -> None:
        with self._lock:
            if sum(self._open.values()) >= self.overall:
                raise TooManyRequestsError(
                    f"{self.overall} log followers are open on this server: try again later, or read "
                    "the log without follow"
                )
            if self._open[owner] >= self.per_user:
                raise TooManyRequestsError(f"you already follow {self.per_user} logs: close one first")
            self._open[owner] += 1

    def leave(self, owner: str) -> None:
        with self._lock:
            self._open[owner] -= 1
            if self._open[owner] <= 0:
                del self._open[owner]


def install_followers(app: flask.Flask) -> None:
    config = app.extensions[SERVER_NAME].settings
    # One thread of each API process always stays free for everything else (/health, reads, submissions).
    overall = config.max_followers or max(1, config.threads - 1)
    app.extensions[FOLLOWERS_KEY] = Followers(config.max_followers_per_user, overall)


def blueprint() -> flask.Blueprint:
    bp = flask.Blueprint("downloads", __name__)

    @bp.get("/jobs/<job_id>/logs")
    @operation(
        "the job's log", {200: LOG_ANSWER}, errors=(400, 404, 429), parameters=[JOB_ID, *LOG_PARAMETERS]
    )
    def job_logs(job_id: str) -> Response:
        return _logs(own_job(job_id))

    @bp.get("/logs")
    @operation(
        "a job's log (prototype call)",
        {200: LOG_ANSWER},
        errors=(400, 404, 429),
        parameters=[*PROTOTYPE_JOB, *LOG_PARAMETERS],
    )
    def prototype_logs() -> Response:
        return _logs(own_job(prototype_job_id()))

    @bp.get("/jobs/<job_id>/model")
    @operation("the model bundle (tar.gz)", {200: ARCHIVE_ANSWER}, errors=(404, 409), parameters=[JOB_ID])
    def job_model(job_id: str) -> Response:
        return _model(own_job(job_id))

    @bp.get("/model")
    @operation(
        "a job's model bundle (prototype call)",
        {200: ARCHIVE_ANSWER},
        errors=(400, 404, 409),
        parameters=PROTOTYPE_JOB,
    )
    def prototype_model() -> Response:
        return _model(own_job(prototype_job_id()))

    @bp.get("/jobs/<job_id>/friends")
    @operation(
        "a predict job's friend trees and predict.json (tar.gz)",
        {200: {"description": "the friend trees", "content": {"application/gzip": {}}}},
        errors=(404, 409),
        parameters=[JOB_ID],
    )
    def job_friends(job_id: str) -> Response:
        job = own_job(job_id)
        require_success(job)
        path = job_dir(job).friends_archive
        if not path.is_file():
            raise NotFoundError(
                f"job {job.id} has no friend trees to download (not a predict job, or they went to its fout)"
            )
        return flask.send_file(
            path, mimetype="application/gzip", as_attachment=True, download_name=f"{job.id}-friends.tar.gz"
        )

    @bp.get("/jobs/<job_id>/plots/<name>.png")
    @operation(
        "the ROC, loss or residuals plot",
        {200: {"description": "PNG", "content": {"image/png": {}}}},
        errors=(404, 409),
        parameters=[JOB_ID, path_parameter("name", enum=list(PLOTS))],
    )
    def job_plot(job_id: str, name: str) -> Response:
        job = own_job(job_id)
        if name not in PLOTS:
            raise NotFoundError(f"no plot {name!r}; plots: {', '.join(PLOTS)}")
        require_success(job)
        path = job_dir(job).plot(name)
        if not path.is_file():
            raise NotFoundError(f"job {job.id} made no {name} plot")
        return flask.send_file(path, mimetype="image/png", max_age=0)

    return bp


def _model(job: Job) -> Response:
    require_success(job)
    path = job_dir(job).model_archive
    if not path.is_file():
        raise NotFoundError(f"job {job.id} has no model archive")
    return flask.send_file(
        path, mimetype="application/gzip", as_attachment=True, download_name=f"{job.model_name}.tar.gz"
    )


def _logs(job: Job) -> Response:
    """The job's log from ``?offset=N``; ``?follow=true`` streams it until the job ends or time is up."""
    path = job_dir(job).log
    offset = int_arg("offset", 0, 0, MAX_LOG_OFFSET)
    follow = request.args.get("follow", "").lower() in ("1", "true", "yes")
    config = settings()
    follow_s = int_arg("follow_s", min(config.follow_default_s, config.follow_max_s), 1, config.follow_max_s)
    if not follow:
        data = _read(path, offset, LOG_PAGE_BYTES)
        response = Response(data, mimetype="text/plain")
        response.headers["X-Log-Offset"] = str(offset + len(data))
        response.headers["X-Job-State"] = job.state
        return response
    followers: Followers = flask.current_app.extensions[FOLLOWERS_KEY]
    owner = current_owner()
    followers.enter(owner)
    store = job_queue().store
    client = request.environ.get("gunicorn.socket")

    def stream() -> Iterator[bytes]:
        yield b""  # the headers go out now, not with the first line of a log that may be long in coming
        position = offset
        deadline = time.monotonic() + follow_s
        while True:
            current = store.get(job.id)
            finished = current is None or current.finished_state
            while chunk := _read(path, position, 1 << 16):
                position += len(chunk)
                yield chunk
            if finished or time.monotonic() > deadline or _client_gone(client):
                return
            time.sleep(FOLLOW_POLL_S)

    response = Response(stream(), mimetype="text/plain")
    # The server closes every response, streamed to the end, dropped by the client, or never started.
    response.call_on_close(lambda: followers.leave(owner))
    response.headers["X-Job-State"] = job.state
    return response


def _client_gone(client: socket.socket | None) -> bool:
    """Whether the follower hung up: a quiet log writes nothing, so the server would not notice otherwise."""
    if client is None:  # not under gunicorn (the test client): only the time limit ends the stream
        return False
    try:
        readable, _, _ = select.select([client], [], [], 0)
        return bool(readable) and client.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (OSError, ValueError):
        return True


def _read(path: Path, offset: int, size: int) -> bytes:
    with contextlib.suppress(FileNotFoundError), path.open("rb") as log:
        log.seek(offset)
        return log.read(size)
    return b""
