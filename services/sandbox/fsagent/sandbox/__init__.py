"""fsagent sandbox: runs the model's tool calls and the documents API, confined to the data root."""

import os

# The sandbox only ever forks to exec a tool at once. gRPC core's fork handlers are meant for
# fork-without-exec; in a fork+exec child of this multi-threaded process they crash or deadlock
# (measured: children dying of SIGSEGV when rlimits were set through a preexec_fn). The runner
# avoids running Python in the child (it execs util-linux prlimit), and gRPC's own advice for
# fork+exec is to turn the handlers off: core reads this when the grpc module loads, which is
# after this package is imported when the service starts through `fsagent-sandbox`.
os.environ["GRPC_ENABLE_FORK_SUPPORT"] = "0"
