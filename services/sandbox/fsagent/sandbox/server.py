"""The fsagent.v1.Sandbox servicer: tool execution, the tool schema, and the documents API."""

from __future__ import annotations

import json
import logging
from contextlib import aclosing
from typing import Any, AsyncIterator, Sequence

import grpc

from fsagent.common import toolspec
from fsagent.common.settings import Settings
from fsagent.sandbox import isolation, metrics, runner
from fsagent.sandbox.cache_client import CacheClient
from fsagent.sandbox.documents import DocError, Documents
from fsagent.sandbox.executor import Executor
from fsagent.v1 import sandbox_pb2, sandbox_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = "fsagent.v1.Sandbox"
INTERNAL_MESSAGE = "internal error in the sandbox"


def _done(operation: str, code: grpc.StatusCode) -> None:
    metrics.DOCUMENT_OPERATIONS.labels(operation, code.name.lower()).inc()


class SandboxServicer(sandbox_pb2_grpc.SandboxServicer):
    def __init__(self, settings: Settings, cache: CacheClient | None = None, launcher: runner.Launcher | None = None) -> None:
        self.settings = settings
        self.executor = Executor(settings, cache, launcher)
        self.documents = Documents(settings, cache, launcher)
        self.confinement: isolation.Report | None = None  # what make_setup detected
        self._tools_json = json.dumps(toolspec.openai_tools())

    # -- tools -----------------------------------------------------------------------------

    async def Execute(self, request: sandbox_pb2.ExecuteRequest, context: grpc.aio.ServicerContext) -> Any:
        return await self.executor.execute(request.tool, request.arguments_json, request.no_cache)

    async def ListTools(self, request: sandbox_pb2.ListToolsRequest, context: grpc.aio.ServicerContext) -> Any:
        return sandbox_pb2.ListToolsResponse(tools_json=self._tools_json)

    # -- documents -------------------------------------------------------------------------

    async def _call(self, operation: str, context: grpc.aio.ServicerContext, coro: Any) -> Any:
        try:
            result = await coro
        except DocError as exc:
            _done(operation, exc.code)
            await context.abort(exc.code, exc.message)
        except Exception:
            # Never let grpc turn the exception into the status details: they would carry host paths.
            log.exception("document operation failed", extra={"operation": operation})
            _done(operation, grpc.StatusCode.INTERNAL)
            await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)
        _done(operation, grpc.StatusCode.OK)
        return result

    async def ListDocuments(self, request: sandbox_pb2.ListDocumentsRequest, context: grpc.aio.ServicerContext) -> Any:
        docs, next_after = await self._call(
            "list", context, self.documents.list(request.path, request.recursive, max(0, request.limit), request.after)
        )
        return sandbox_pb2.ListDocumentsResponse(documents=docs, next_after=next_after)

    async def ReadDocument(self, request: sandbox_pb2.ReadDocumentRequest, context: grpc.aio.ServicerContext) -> Any:
        return await self._call("read", context, self.documents.read(request.path))

    async def WriteDocument(self, request: sandbox_pb2.WriteDocumentRequest, context: grpc.aio.ServicerContext) -> Any:
        return await self._call("write", context, self.documents.write(request.path, request.content, request.mode))

    async def DeleteDocument(self, request: sandbox_pb2.DeleteDocumentRequest, context: grpc.aio.ServicerContext) -> Any:
        rel = await self._call("delete", context, self.documents.delete(request.path))
        return sandbox_pb2.DeleteDocumentResponse(path=rel)

    async def UploadDocument(
        self, request_iterator: AsyncIterator[sandbox_pb2.UploadChunk], context: grpc.aio.ServicerContext
    ) -> Any:
        return await self._call("upload", context, self.documents.upload(request_iterator))

    async def _stream(self, operation: str, context: grpc.aio.ServicerContext, gen: AsyncIterator[Any]) -> AsyncIterator[Any]:
        try:
            async with aclosing(gen):  # a client that goes away stops the work (and rg) at once
                async for item in gen:
                    yield item
        except DocError as exc:
            _done(operation, exc.code)
            await context.abort(exc.code, exc.message)
        except Exception:
            log.exception("document stream failed", extra={"operation": operation})
            _done(operation, grpc.StatusCode.INTERNAL)
            await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)
        _done(operation, grpc.StatusCode.OK)

    async def StreamFile(self, request: sandbox_pb2.StreamFileRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        gen = self.documents.stream_file(request.path, request.chunk_lines)
        async with aclosing(self._stream("stream_file", context, gen)) as stream:
            async for chunk in stream:
                yield chunk

    async def StreamSearch(self, request: sandbox_pb2.StreamSearchRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        gen = self.documents.stream_search(
            request.path, request.pattern, request.ignore_case, request.fixed_strings, request.max_results
        )
        async with aclosing(self._stream("stream_search", context, gen)) as stream:
            async for match in stream:
                yield match


def make_setup(settings: Settings, cache_address: str | None = None):  # type: ignore[no-untyped-def]
    """A lifecycle `setup`: register the servicer (with its cache client) and return the cleanups."""

    async def setup(server: grpc.aio.Server) -> Sequence[Any]:
        # The walls around tool processes, detected once (may refuse to start: isolation=bwrap).
        confinement = await isolation.start(settings)
        address = settings.cache_addr if cache_address is None else cache_address
        cache = CacheClient(address, settings.cache_timeout) if address else None
        servicer = SandboxServicer(settings, cache, confinement.launcher)
        servicer.confinement = confinement.report
        sandbox_pb2_grpc.add_SandboxServicer_to_server(servicer, server)
        cleanups = [confinement.close]
        if cache is not None:
            cleanups.append(cache.close)
        return cleanups

    return setup
