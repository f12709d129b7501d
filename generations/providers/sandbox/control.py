"""The test-control API under `/_sandbox/`: the Python API of `Sandbox`, over HTTP."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .wire import Request, Response, json_response

if TYPE_CHECKING:
    from .server import Sandbox


def handle(sandbox: Sandbox, req: Request) -> Response:
    try:
        return _route(sandbox, req)
    except (ValueError, TypeError, KeyError) as exc:
        return json_response(400, {"error": str(exc)})


def _route(sandbox: Sandbox, req: Request) -> Response:
    path = req.path.rstrip("/")
    if req.method == "GET":
        if path == "/health":
            return json_response(200, {"ok": True, **sandbox.describe()})
        if path == "/requests":
            provider = req.query.get("provider")
            rows = [r.as_dict() for r in sandbox.requests if provider in (None, r.provider)]
            return json_response(200, {"requests": rows})
        if path == "/deliveries":
            return json_response(200, {"deliveries": sandbox.deliveries})
        if path == "/options":
            return json_response(200, {"options": sandbox.options})
    if req.method == "POST":
        body: Any = req.json() or {}
        if not isinstance(body, dict):
            raise ValueError("body must be a JSON object")
        if path == "/faults":
            sandbox.set_faults(body)
            return json_response(200, {"faults": sandbox.faults})
        if path == "/queue":
            sandbox.queue_fault(body["kind"], body.get("provider"), body.get("phase"))
            return json_response(200, {"queued": sandbox.fault_plan.queued()})
        if path == "/latency":
            sandbox.set_latency(float(body["min"]), float(body.get("max", body["min"])))
            return json_response(200, {"latency": list(sandbox.latency)})
        if path == "/options":
            sandbox.set_options(**body)
            return json_response(200, {"options": sandbox.options})
        if path == "/reset":
            sandbox.reset()
            return json_response(200, {"ok": True})
    return json_response(404, {"error": f"no control endpoint {req.method} /_sandbox{req.path}"})
