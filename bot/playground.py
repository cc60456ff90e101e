"""The web playground: chat with the bot in a browser, with no CometChat account (local mode only).

``/playground`` serves a plain HTML/CSS/JS chat page (``bot/static/playground``,
no build step, no CDN). The page talks to a small JSON API under
``/playground/api``; every message a user sends goes to the emulator
(bot/emulator.py), which relays it to the bot exactly as CometChat would:
as a bot callback through the app's real callback endpoint (Basic auth,
validation, journal, dispatch), and the bot's replies come back through
the real sender into the emulator, from where the page picks them up
(long polling). Forms and cards the bot sends are submitted by the page to
the real interaction endpoint, as CometChat's UI kit does.

The playground is never registered when CometChat credentials are set, and
by default answers only clients on this machine (``PLAYGROUND=local``).
"""

from __future__ import annotations

import atexit
import ipaddress
import mimetypes
import os
import re
import shutil
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, abort, jsonify, redirect, request, send_from_directory, url_for
from werkzeug.utils import secure_filename

from .emulator import ApiError, Emulator
from .errors import CallbackError

STATIC = Path(__file__).parent / "static" / "playground"
#: Uploads are kept in a temporary folder for the life of the process.
MAX_UPLOAD_BYTES = 10 * 1024 * 1024
#: Longest wait of one long poll for new messages.
MAX_POLL_SECONDS = 20.0


class PlaygroundError(CallbackError):
    code = "bad_request"


def create_playground_blueprint(emulator: Emulator, *, local_only: bool = True) -> Blueprint:
    """The page and its API; ``emulator.relay`` must already post callbacks to the app.

    ``local_only``: answer only clients on this machine (loopback addresses): a local-mode app that ends up
    reachable from elsewhere does not hand its handlers to anyone who finds it (``PLAYGROUND=all`` opens it).
    """
    bp = Blueprint("playground", __name__, static_folder=str(STATIC), static_url_path="/playground/static")
    uploads = _Uploads()

    @bp.before_request
    def only_here() -> tuple[Response, int] | None:
        if local_only and not _loopback(request.remote_addr):
            message = "the playground answers only on this machine; set PLAYGROUND=all to open it to others"
            return jsonify(error={"code": "forbidden", "message": message}), 403
        return None

    @bp.errorhandler(ApiError)
    def api_error(error: ApiError) -> tuple[Response, int]:
        status, body = error.answer()
        return jsonify(body), status

    @bp.errorhandler(CallbackError)
    def bad_request(error: CallbackError) -> tuple[Response, int]:
        return jsonify(error.to_json()), error.status

    @bp.get("/")
    def home() -> Response:
        return redirect(url_for("playground.page"))

    @bp.get("/playground", strict_slashes=False)
    def page() -> Response:
        response = send_from_directory(STATIC, "index.html")
        response.headers["Cache-Control"] = "no-store"
        return response

    @bp.get("/playground/api/state")
    def state() -> Response:
        return jsonify(emulator.snapshot())

    @bp.get("/playground/api/updates")
    def updates() -> Response:
        since = _int_arg("since", 0)
        wait = min(max(_float_arg("wait", 0.0), 0.0), MAX_POLL_SECONDS)
        version, messages = emulator.changes(since, timeout=wait)
        return jsonify(version=version, messages=messages)

    @bp.post("/playground/api/messages")
    def send() -> tuple[Response, int]:
        body = _json_body()
        data: dict[str, Any] = {}
        category, type_ = body.get("category", "message"), body.get("type", "text")
        if category == "custom":
            data["customData"] = body.get("customData")
        elif type_ == "text":
            data["text"] = body.get("text")
        else:
            attachments = body.get("attachments")
            if not isinstance(attachments, list) or not all(isinstance(a, dict) for a in attachments):
                raise PlaygroundError("attachments must be a list of objects", fields={"attachments": ["Invalid."]})
            data["attachments"] = attachments
            if attachments:
                data["url"] = attachments[0].get("url")
        if isinstance(body.get("metadata"), dict):
            data["metadata"] = body["metadata"]
        message, relayed = emulator.send_as_user(
            _str(body, "sender"),
            _str(body, "receiver"),
            _str(body, "receiverType"),
            category=category,
            type=type_,
            data=data,
            parent_id=body.get("parentId") or None,
        )
        return jsonify(message=message, relayed=relayed), 201

    @bp.post("/playground/api/users")
    def add_user() -> Response:
        body = _json_body()
        uid = _id(body, "uid")
        if uid == emulator.bot_uid:
            raise ApiError(409, "ERR_UID_ALREADY_EXISTS", f"{uid!r} is the bot")
        return jsonify(emulator.user(uid, str(body.get("name") or "")))

    @bp.post("/playground/api/groups")
    def add_group() -> tuple[Response, int]:
        body = _json_body()
        guid = _id(body, "guid")
        if guid in emulator.groups:
            raise ApiError(409, "ERR_GUID_ALREADY_EXISTS", f"the group {guid!r} exists already")
        members = [emulator.bot_uid, *([body["creator"]] if isinstance(body.get("creator"), str) else [])]
        group = emulator.group(guid, str(body.get("name") or ""), members=members)
        return jsonify(guid=group["guid"], name=group["name"], members=sorted(group["members"])), 201

    @bp.put("/playground/api/groups/<guid>/members/<uid>")
    def set_member(guid: str, uid: str) -> Response:
        member = _json_body().get("member")
        if not isinstance(member, bool):
            raise PlaygroundError("member must be true or false", fields={"member": ["Not a boolean."]})
        emulator.set_member(guid, uid, member)
        return jsonify(emulator.snapshot())

    @bp.put("/playground/api/settings")
    def settings() -> Response:
        emulator.set_group_chat_setting(_str(_json_body(), "groupChatSetting"))
        return jsonify(emulator.snapshot())

    @bp.post("/playground/api/uploads")
    def upload() -> tuple[Response, int]:
        request.max_content_length = MAX_UPLOAD_BYTES
        file = request.files.get("file")
        if file is None or not file.filename:
            raise PlaygroundError("send the file as multipart form field 'file'", fields={"file": ["Missing."]})
        name = secure_filename(file.filename) or "file"
        stored = f"{uuid.uuid4().hex[:12]}-{name}"
        folder = uploads.folder()
        file.save(folder / stored)
        extension = os.path.splitext(name)[1].lstrip(".").lower()
        attachment = {
            "url": url_for("playground.uploaded", name=stored, _external=True),
            "name": name,
            "mimeType": file.mimetype or mimetypes.guess_type(name)[0] or "application/octet-stream",
            "extension": extension,
            "size": (folder / stored).stat().st_size,
        }
        return jsonify(attachment), 201

    @bp.get("/playground/files/<name>")
    def uploaded(name: str) -> Response:
        # Uploads are anyone's bytes on the app's own origin: media are shown, everything else (HTML, SVG, ...)
        # is a download, and nothing runs scripts with the page's rights.
        kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
        inline = kind.split("/")[0] in ("image", "audio", "video") and kind != "image/svg+xml"
        if uploads.path is None:
            abort(404)
        response = send_from_directory(uploads.path, name, as_attachment=not inline)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Content-Security-Policy"] = "sandbox"
        return response

    return bp


class _Uploads:
    """The folder of the playground's uploads: made at the first upload (an app that never gets one, such as a
    test's, leaves nothing behind) and removed when the process that made it exits."""

    def __init__(self) -> None:
        self.path: Path | None = None
        self._lock = threading.Lock()

    def folder(self) -> Path:
        with self._lock:
            if self.path is None:
                self.path = Path(tempfile.mkdtemp(prefix="bot-playground-"))
                atexit.register(_remove_folder, self.path, os.getpid())
            return self.path


def _remove_folder(path: Path, owner_pid: int) -> None:
    if os.getpid() == owner_pid:  # not a forked child's exit: the folder is its parent's
        shutil.rmtree(path, ignore_errors=True)


def _loopback(address: str | None) -> bool:
    try:
        return ipaddress.ip_address(address or "").is_loopback
    except ValueError:
        return False


def _json_body() -> dict[str, Any]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise PlaygroundError("send a JSON object (Content-Type: application/json)")
    return body


def _str(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value.strip():
        raise PlaygroundError(f"{name} is required", fields={name: ["Missing or not a string."]})
    return value.strip()


def _id(body: dict[str, Any], name: str) -> str:
    """A uid or guid as CometChat takes them: lower case letters, digits, ``_`` and ``-``."""
    value = _str(body, name).lower()
    if not _ID.fullmatch(value):
        raise PlaygroundError(f"{name} may hold letters, digits, _ and - (at most 100)", fields={name: ["Invalid."]})
    return value


_ID = re.compile(r"[a-z0-9_-]{1,100}")


def _int_arg(name: str, default: int) -> int:
    try:
        return int(request.args.get(name, default))
    except ValueError:
        raise PlaygroundError(f"{name} must be a whole number") from None


def _float_arg(name: str, default: float) -> float:
    try:
        return float(request.args.get(name, default))
    except ValueError:
        raise PlaygroundError(f"{name} must be a number") from None
