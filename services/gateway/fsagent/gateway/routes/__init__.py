"""HTTP routes, one router per area."""

from __future__ import annotations

from starlette.convertors import PathConvertor, register_url_convertor


class AnyPathConvertor(PathConvertor):
    """Every character, newlines included (Starlette's own `path` is `.*`).

    With `.*` a document path holding a newline matched no route (a bare 404 "Not Found"), and
    one ending in a newline matched with the newline cut off by `$`. Matching it whole lets the
    route give the real answer: 400 `invalid_path` for a write (fsagent.common.names), the file
    for a read. Registered under the same name, so route templates (and the `route` metric label,
    `/api/documents/{path:path}`) stay as they are; it must be in place before the app includes
    its routers, which importing any route module ensures.
    """

    regex = "(?s:.*)"


register_url_convertor("path", AnyPathConvertor())
