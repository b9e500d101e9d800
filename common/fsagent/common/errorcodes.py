"""How a typed chat error travels from the agent to the gateway over gRPC.

A failed Chat (or session call) carries its typed code (`llm_rate_limited`, `sandbox_unavailable`,
...; the same codes as `ErrorEvent.code`) in this trailing metadata key, and a wait the caller
should respect, in whole seconds, in the second one. README.md's error table lists the codes.
"""

ERROR_CODE_KEY = "fsagent-error-code"
RETRY_AFTER_KEY = "fsagent-retry-after"
