"""The agent tests host the real sandbox servicer in this process, next to gRPC servers, clients
and the openai client's threads.

In that setup, with gRPC's fork support on, the sandbox's fork of rg/grep sometimes happens while
other threads are inside gRPC; gRPC then skips its fork handlers and the child can crash before
exec (seen as "grep failed with exit code -11"). The standalone sandbox process did not show it
(300 concurrent greps). Fork support only matters for fork-without-exec, which nothing here does,
so it is off for these tests; gRPC reads the variable when it initialises, at the first channel or
server, which is after collection."""

import os

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")
