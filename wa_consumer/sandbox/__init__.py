"""A local stand-in for Meta's Cloud API ``/messages`` endpoint and for the tenant service.

Part of the product (``wa-consumer sandbox``, the demo, staging, tests): it answers with
Meta's JSON shapes and codes, so the daemon cannot tell it from the real thing, and lets a
user provoke every outcome on purpose.

Endpoints (one port serves all):

- ``POST /{version}/{phone_number_id}/messages``: token check (unknown token: 401 code 190;
  a rotated-out token: 401 code 190 subcode 463), number ownership (a number the token's
  tenant does not own: 400 code 100 subcode 33 ``GraphMethodException``, Meta's answer for an
  object the token may not use), body (not JSON, no ``messaging_product``, no ``to``: 400
  code 100), per-number throughput (400 code 130429), recipient rules, random failures;
  otherwise 200 with ``contacts`` and a fresh ``wamid`` (templates add
  ``message_status: accepted``; read receipts answer ``{"success": true}``).
- ``GET /tenants/{tenant_id}/whatsapp-credentials``: 200 ``accessToken``, ``phoneNumberId``,
  ``phoneNumberIds``; 404 unknown; 403 suspended; 401 without the service token when
  ``service_token`` is set.
- ``/_sandbox/``: ``GET config``, ``POST config`` (replace top-level settings), ``GET
  requests?since=N``, ``GET stats``, ``GET tenants``, ``POST tenants/{id}/rotate``,
  ``POST reset``, ``POST webhooks/status`` (one status for a wamid, now: a late failure).

Default tenants (tokens are fake, ``sandbox-<tenant>-<16 hex>``, new at every start, listed
by ``GET /_sandbox/tenants`` and the start-up banner):

==========  ====================================  ==========
tenant      phone number ids                      state
==========  ====================================  ==========
acme        106540352242922, 106540352242923      active
globex      107650492331811                       active
initech     108760582410700                       suspended
==========  ====================================  ==========

Default recipient rules: recipients ``1555 00D xxxx`` (any digits after the seventh), where
``D`` picks the outcome; ``times`` counts per recipient, so each new number starts afresh.
Every other recipient is sent.

===========  =====================================================  ===========
recipient    answer                                                 how often
===========  =====================================================  ===========
1555000...   400 code 131026 message undeliverable (permanent)      always
1555001...   500 code 131000 something went wrong (transient)       twice, then sent
1555002...   400 code 131031 business account locked (account)      always
1555003...   400 code 130429 throughput rate limit hit              once, then sent
1555004...   400 code 131056 pair rate limit hit                    once, then sent
1555005...   502 HTML page from a proxy (no JSON)                   once, then sent
1555006...   400 code 131047 24-hour window closed (permanent)      always
1555007...   no answer at all (client timeout, ambiguous)           once, then sent
1555008...   503 with an empty body                                 once, then sent
1555009...   500 code 131016 service unavailable (transient)        always
===========  =====================================================  ===========

Status webhooks (``SandboxConfig.webhooks``, off until ``url`` is set, SPEC §13): every
accepted message gets ``sent`` at once, ``delivered`` after ``delivered_after_ms``, ``read``
for a ``read_share``, POSTed to ``url`` in Meta's body shape and signed with ``app_secret``
(``X-Hub-Signature-256``), with pricing, conversation and ``biz_opaque_callback_data``.
Recipients ``1555 01D xxxx`` are accepted and then get ``sent`` and ``failed``: D=0 131026
(undeliverable), 1 131047 (24 h window), 2 131049 (ecosystem limit). Duplicates, reverse
order and batching on request; counters under ``webhooks`` in ``GET /_sandbox/stats``.

Behaviour (``SandboxConfig``): latency and jitter, tenants, rules, a random failure rate and
code, requests/s per number (off by default; Meta's default is 80), the service token, the
request log (turn it off for benchmarks), and the status webhooks.
"""

from wa_consumer.sandbox.app import (
    DEFAULT_PORT,
    STATE_KEY,
    RunningSandbox,
    create_app,
    run_sandbox,
    start_sandbox,
)
from wa_consumer.sandbox.client import Credentials, RecordedRequest, SandboxClient, TenantInfo
from wa_consumer.sandbox.config import (
    FailureRule,
    Latency,
    SandboxConfig,
    TenantConfig,
    WebhookConfig,
    WebhookFailure,
    load_config,
)
from wa_consumer.sandbox.state import SandboxState
from wa_consumer.sandbox.webhooks import WebhookSender

__all__ = [
    "DEFAULT_PORT",
    "STATE_KEY",
    "Credentials",
    "FailureRule",
    "Latency",
    "RecordedRequest",
    "RunningSandbox",
    "SandboxClient",
    "SandboxConfig",
    "SandboxState",
    "TenantConfig",
    "TenantInfo",
    "WebhookConfig",
    "WebhookFailure",
    "WebhookSender",
    "create_app",
    "load_config",
    "run_sandbox",
    "start_sandbox",
]
