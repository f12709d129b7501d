"""Vtrix (SeaArt's SeaCloud gateway), model flux_2_max: an async task API that passes BFL's parameters through.

Docs: providers.md section 2 ([S001]/[S002] the model page, [V5] vtrix-cli, [V7] SeaCloud errors, [B1] BFL).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from .base import (
    FLUX_2_MAX_LIST_PRICE,
    MEGAPIXEL,
    PENDING,
    SUCCEEDED,
    Adapter,
    GenerationRequest,
    HttpCall,
    ModelSpec,
    Outcome,
    ProviderError,
    Reply,
    credit_cost,
    extract_message,
    finished_without_images,
    fraction,
    is_int,
    job_id_text,
    loads,
    moderation_or_failure,
    status_word,
    usable_urls,
    with_error_code,
    words,
)

REFERENCE_SLOTS = ("input_image", *(f"input_image_{i}" for i in range(2, 9)))  # [S001]
# A made-up id in the shape of the documented one (20 lowercase alphanumerics, [V5]).
CHECK_TASK_ID = "fluxwebcheck00000000"
# flux_2_pro's page says multiples of 32 [V6], BFL says 16 [B1] [CONFLICT]: flux_2_max's params are BFL's
# verbatim [S001][B2], so BFL's rule.
MULTIPLE = 16
MAX_PIXELS = 4 * MEGAPIXEL  # [B1]
# SeaCloud's `{"status": {"code", "message", "error_code"}, "data": null}` envelope: these error codes mean the
# account has no balance, whatever the HTTP status [SC-CLI clierrors, TestSubmitPreservesInsufficientBalanceErrorCode].
NO_BALANCE_CODES = range(40201, 40209)


class Vtrix(Adapter):
    kind = "vtrix"
    label = "Vtrix"
    default_base_url = "https://cloud.vtrix.ai"
    # Seen only in placeholder CLI output [V4][VX-CLI]: not reliably known, so an admin can add hosts.
    result_hosts = frozenset({"cdn.vtrix.ai"})
    cost_unit = "USD"  # usage.cost is a USD string [S001]
    cost_unit_usd = "1"
    default_prices = {"flux-2-max": FLUX_2_MAX_LIST_PRICE}  # flux_2_max price [UNKNOWN]: BFL's list price
    # Its CLIs poll every 3-5 s [VX-CLI][SC-CLI] and it publishes no limit [V2]: 120 a minute keeps 6-10 jobs
    # at that pace, and fast polls near a job's expected end stay fine (corrections 6).
    min_poll_interval = 0.25
    default_max_rpm = 120
    typical_seconds = 10.0  # 10-40 s (providers.md, emulator notes)
    # Statuses differ by source: in_progress|completed|failed [V3][V5], pending|processing [V4], done [V8]
    # [CONFLICT]: completed or done is success, failed is failure, anything else keeps polling.
    statuses = {
        "pending": PENDING,
        "processing": PENDING,
        "in_progress": PENDING,
        "completed": SUCCEEDED,
        "done": SUCCEEDED,
        "failed": ProviderError.FAILED,
    }
    models = {
        "flux-2-max": ModelSpec(
            id="flux-2-max",
            provider_model="flux_2_max",
            megapixels=(0.5, 1.0, 2.0, 4.0),
            custom_size=(64, 2048),  # "x >= 64" [S001]; 2048 a side keeps a square within BFL's 4 MP [B1]
            size_multiple=MULTIPLE,
            max_pixels=MAX_PIXELS,
            max_reference_images=8,  # input_image .. input_image_8 [S001]
            output_formats=("jpeg", "png"),
            # "0 <= x <= 5" although the text says "6 is least strict" [S001 CONFLICT]: the range wins.
            safety_tolerance=(0, 5),
            # The blurb promises prompt upsampling but the parameter list has none [S002].
            prompt_upsampling=False,
            max_prompt_chars=5000,  # no limit documented [UNKNOWN]; bounds what we store and send
        )
    }

    def build_submit(self, request: GenerationRequest) -> HttpCall:
        width, height = request.dimensions
        params: dict = {
            "prompt": request.prompt,
            "width": width,
            "height": height,
            "output_format": request.output_format,
        }
        if request.seed is not None:
            params["seed"] = request.seed
        if request.safety_tolerance is not None:
            params["safety_tolerance"] = request.safety_tolerance
        params.update(zip(REFERENCE_SLOTS, request.reference_urls, strict=False))
        # webhook_url/webhook_secret are BFL's, copied; no Vtrix page describes a delivery [S001][V7]: we poll.
        # The page lists `model` beside the params as if flat, but vtrix-cli and other clients send
        # input[0].params and SeaCloud says only its newer queue API drops the wrapper [S001 vs V5/V7 CONFLICT].
        body = {"model": self.spec(request.model).provider_model, "input": [{"params": params}]}
        return HttpCall("POST", "/model/v1/generation", self.headers(), body)

    def check(self, reply: Reply) -> Any:
        """The task of a successful reply. The SeaCloud envelope can also arrive with a 2xx status carrying an
        error code, or wrap the task in `data` [SC-CLI]: read both, so neither is mistaken for a task."""
        data = super().check(reply)
        envelope = envelope_of(data)
        if envelope is None:
            return data
        code = envelope.get("code")
        if is_int(code) and code >= 400 or envelope.get("error_code") not in (None, 0, ""):
            status = code if is_int(code) and 400 <= code <= 599 else 400
            raise self.error_for(Reply(status, reply.headers, reply.body))
        return data.get("data")

    def parse_submit(self, reply: Reply) -> Outcome:
        data = self.check(reply)
        if not isinstance(data, dict) or not job_id_text(data.get("id")):
            # vtrix-cli treats a create reply without an id as a failure and shows its `error` [V5].
            detail = error_text(data.get("error")) if isinstance(data, dict) else ""
            raise ProviderError(
                ProviderError.MALFORMED, f"Vtrix sent no task id{': ' + detail if detail else '.'}"
            )
        return self.parse_task(data)

    def build_poll(self, job_id: str, poll_url: str | None = None) -> HttpCall:
        return HttpCall("GET", f"/model/v1/generation/task/{quote(job_id, safe='')}", self.headers())

    def parse_poll(self, reply: Reply) -> Outcome:
        data = self.check(reply)
        if not isinstance(data, dict):
            raise ProviderError(ProviderError.MALFORMED, "Vtrix sent a task without a status.")
        return self.parse_task(data)

    def parse_task(self, data: dict) -> Outcome:
        raw = status_word(self.label, data)
        meaning = self.meaning(raw)
        job_id = job_id_text(data.get("id"))
        usage = data.get("usage")
        cost = credit_cost(usage.get("cost")) if isinstance(usage, dict) else None  # a USD string [S001]
        if meaning == SUCCEEDED:
            candidates = output_items(data.get("output"))
            urls = usable_urls(candidates)
            if urls:
                return Outcome(
                    state="succeeded", job_id=job_id, image_urls=urls, progress=1.0, cost=cost, raw_status=raw
                )
            if data.get("error") not in (None, "", {}):
                # Completed with an error and no output is a failure: SeaCloud's own client turns it into
                # failed [SC-CLI]; polling again would only wait for the deadline.
                return self.failure(data, job_id, cost, raw)
            return finished_without_images(self.label, candidates, job_id=job_id, cost=cost, raw_status=raw)
        if meaning == ProviderError.FAILED:
            return self.failure(data, job_id, cost, raw)
        progress = fraction(data.get("progress"))  # 0.0-1.0 [V5]
        return Outcome(state="pending", job_id=job_id, progress=progress, raw_status=raw)

    def failure(self, data: dict, job_id: str | None, cost: str | None, raw: str) -> Outcome:
        message = error_text(data.get("error")) or "Vtrix failed the task."
        error = ProviderError(moderation_or_failure(self.label, message), message)
        return Outcome(state="failed", job_id=job_id, error=error, cost=cost, raw_status=raw)

    def build_check(self) -> HttpCall:
        # Vtrix documents no account or model listing call [V1][V2]; asking for a task that does not exist is
        # cheap and passes authentication first [INFERRED].
        return HttpCall("GET", f"/model/v1/generation/task/{CHECK_TASK_ID}", self.headers())

    def parse_check(self, reply: Reply) -> None:
        if reply.status == 404:
            return  # the key got past authentication; the task is unknown, as intended
        self.check(reply)

    def error_message(self, reply: Reply) -> str:
        envelope = envelope_of(loads(reply.body))
        if envelope is not None:
            message = extract_message(envelope) or f"HTTP {reply.status}"
            code = envelope.get("error_code")
            return (
                f"{message} (error code {code})"
                if is_int(code) or isinstance(code, str) and code
                else message
            )
        return with_error_code(super().error_message(reply), reply)

    def error_for(self, reply: Reply) -> ProviderError:
        """Error codes 40201-40208 mean the account has no balance, on any status [SC-CLI]; Vtrix's 403 is
        "Insufficient balance or permission denied" [V1], which the words already tell apart."""
        error = super().error_for(reply)
        envelope = envelope_of(loads(reply.body))
        code = envelope.get("error_code") if envelope is not None else None
        if isinstance(code, str) and code.strip().isdecimal():
            code = int(code.strip())
        if is_int(code) and code in NO_BALANCE_CODES and error.code != ProviderError.PROVIDER_CREDIT:
            message = words(self.error_message(reply)) or f"HTTP {reply.status}"
            return ProviderError(
                ProviderError.PROVIDER_CREDIT,
                f"The {self.label} account is out of credit: {message}",
                status=reply.status,
            )
        return error


def envelope_of(data: object) -> dict | None:
    """The `status` object of SeaCloud's `{"status": {"code", "message", "error_code"}, "data": ...}`
    envelope [SC-CLI], or None when `data` is not one (a task's `status` is a string)."""
    if isinstance(data, dict) and isinstance(data.get("status"), dict):
        return data["status"]
    return None


def output_items(output: object) -> list:
    """Every `output[*].content[*]` item, flattened as vtrix-cli's URLs() does [V5]."""
    if not isinstance(output, list):
        return []
    return [
        item
        for group in output
        if isinstance(group, dict) and isinstance(group.get("content"), list)
        for item in group["content"]
    ]


def error_text(error: object) -> str:
    """A failed task's `error`: a string, `{code, message}` [S001] or `{code: int, error_message}` [V5]."""
    message = extract_message(error).strip()
    code = error.get("code") if isinstance(error, dict) else None
    if not (is_int(code) or isinstance(code, str)):
        code = None  # a code that is an object or a list says nothing
    if code not in (None, "") and str(code) not in message:
        message = f"{message} (code {code})" if message else f"Error code {code}"
    return message
