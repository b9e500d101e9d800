"""The tools the model may call: one strict pydantic model per tool, and their OpenAI schema.

Shared by the agent (which sends `openai_tools()` to the LLM and may pre-validate calls) and the
sandbox (which validates every call with `parse_arguments` before it touches the disk). The model
chooses every argument and documents may carry prompt injection, so each field is typed and
bounded, unknown fields are refused, and no field can become a command-line flag: the sandbox
builds every argv itself from these typed values.

Paths are always relative to the data root: "." is the root, and a leading "/" also means the
root ("/policies" == "policies"). They are confined to the root by the sandbox.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

MAX_PATH_CHARS = 4096
MAX_ARGUMENTS_JSON_CHARS = 64 * 1024
_MAX_ECHO = 200



class ToolArgumentError(ValueError):
    """A call the sandbox refuses before running anything; `message` is meant for the model."""

    def __init__(self, message: str, unknown_fields: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.message = message
        # Parameters the tool does not have (the model tried an option we don't offer).
        self.unknown_fields = unknown_fields


def _check_path(value: str) -> str:
    if "\x00" in value:
        raise ValueError("path must not contain NUL bytes")
    if any(len(part) > 255 for part in value.split("/")):
        raise ValueError("a path component is longer than 255 characters")
    return value


def _check_glob(value: str | None) -> str | None:
    if value is None:
        return None
    if any(ch in value for ch in "\x00\n\r"):
        raise ValueError("must not contain NUL or newline characters")
    return value


# A path relative to the data root (confinement is the sandbox's job; this only checks the shape).
PathStr = Annotated[str, AfterValidator(_check_path)]
GlobStr = Annotated[str, AfterValidator(_check_glob)]


def _path_field(default: str | None = ".", description: str = "") -> Any:
    text = description or (
        'Path relative to the data root ("." is the root). Use a directory to search beneath it.'
    )
    if default is None:
        return Field(..., min_length=1, max_length=MAX_PATH_CHARS, description=text)
    return Field(default, max_length=MAX_PATH_CHARS, description=text)


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False, frozen=True)


class GrepArgs(_Args):
    """Search file contents with a regular expression (ripgrep syntax)."""

    pattern: str = Field(
        ...,
        min_length=1,
        max_length=1000,
        description=(
            "Regular expression to search for (Rust/ripgrep regex syntax, e.g. 'deploy(ment)?'). "
            "Set fixed_strings to search for the literal text instead."
        ),
    )
    path: PathStr = _path_field(".", 'File or directory to search, relative to the data root ("." = everything).')
    ignore_case: bool = Field(False, description="Case-insensitive match.")
    fixed_strings: bool = Field(False, description="Treat pattern as literal text, not a regex.")
    word: bool = Field(False, description="Match whole words only.")
    context: int = Field(0, ge=0, le=10, description="Lines of context to show before and after each match (0-10).")
    glob: GlobStr | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="Only search files whose name matches this glob, e.g. '*.md' or '*.{csv,json}'.",
    )
    files_with_matches: bool = Field(
        False, description="Print only the paths of files that contain a match, not the lines."
    )
    max_count: int | None = Field(
        None, ge=1, le=1000, description="Stop after this many matching lines per file (1-1000)."
    )



class FindArgs(_Args):
    """List files and directories by name, recursively."""

    path: PathStr = _path_field(".", 'Directory to search beneath, relative to the data root ("." = everything).')
    name: str | None = Field(
        None, min_length=1, max_length=255,
        description="Glob matched against the file name only (not the directory), e.g. '*.md' or 'README*'.",
    )
    iname: str | None = Field(
        None, min_length=1, max_length=255,
        description="Like name, but case-insensitive. Give name or iname, not both.",
    )
    type: Literal["f", "d"] | None = Field(None, description="'f' for regular files only, 'd' for directories only.")
    max_depth: int | None = Field(
        None, ge=1, le=50, description="Descend at most this many directory levels below path (1 = direct children)."
    )


    @field_validator("name", "iname")
    @classmethod
    def _v_name(cls, value: str | None) -> str | None:
        _check_glob(value)
        if value is not None and "/" in value:
            raise ValueError("matches the file name only and must not contain '/'; use path for the directory")
        return value

    @model_validator(mode="after")
    def _one_name(self) -> "FindArgs":
        if self.name is not None and self.iname is not None:
            raise ValueError("give name or iname, not both")
        return self


class CatArgs(_Args):
    """Print a text file, or only a range of its lines."""

    path: PathStr = _path_field(None, "File to print, relative to the data root.")
    start_line: int | None = Field(None, ge=1, description="First line to print (1-based). Omit to start at line 1.")
    end_line: int | None = Field(
        None, ge=1, description="Last line to print (inclusive, >= start_line). Omit to print to the end."
    )


    @model_validator(mode="after")
    def _range(self) -> "CatArgs":
        if self.start_line is not None and self.end_line is not None and self.end_line < self.start_line:
            raise ValueError("end_line must be >= start_line")
        return self


class HeadArgs(_Args):
    """Print the first lines of a text file."""

    path: PathStr = _path_field(None, "File to read, relative to the data root.")
    lines: int = Field(10, ge=1, le=5000, description="Number of lines to print from the start (1-5000).")



class TailArgs(_Args):
    """Print the last lines of a text file."""

    path: PathStr = _path_field(None, "File to read, relative to the data root.")
    lines: int = Field(10, ge=1, le=5000, description="Number of lines to print from the end (1-5000).")



class LsArgs(_Args):
    """List one directory (directories end with '/')."""

    path: PathStr = _path_field(".", 'Directory to list, relative to the data root ("." = the root).')
    all: bool = Field(False, description="Include entries whose names start with '.'.")
    long: bool = Field(False, description="Show type, size in bytes and modification time (UTC) for each entry.")



class TreeArgs(_Args):
    """Show the directory tree (names only), to a depth."""

    path: PathStr = _path_field(".", 'Directory to show, relative to the data root ("." = the root).')
    max_depth: int = Field(3, ge=1, le=20, description="Levels to descend (1-20).")



class WcArgs(_Args):
    """Count lines, words and bytes of files."""

    paths: list[PathStr] = Field(
        ..., min_length=1, max_length=50,
        description="Files to count, relative to the data root (1-50). A total line is added for several files.",
    )

    @field_validator("paths")
    @classmethod
    def _v_paths(cls, value: list[str]) -> list[str]:
        for item in value:
            if not item or len(item) > MAX_PATH_CHARS:
                raise ValueError(f"each path must be 1-{MAX_PATH_CHARS} characters")
            _check_path(item)
        return value


class PreviewArgs(_Args):
    """A quick look at a file: its size and line count, then its first lines."""

    path: PathStr = _path_field(None, "File to preview, relative to the data root.")
    lines: int = Field(20, ge=1, le=200, description="Number of lines to show from the start (1-200).")



Namespace = Literal["content", "search"]


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    model: type[_Args]
    namespace: Namespace  # cache namespace of its results
    path_fields: tuple[str, ...]  # argument fields that hold paths ("paths" is a list)


TOOLS: dict[str, ToolSpec] = {
    spec.name: spec
    for spec in (
        ToolSpec(
            "grep",
            "Search file contents for a regular expression, recursively (ripgrep). Output lines are "
            "'path:LINE:text' (context lines 'path:LINE-text', groups separated by '--'); no output "
            "means no match. Start here to find where something is mentioned. A path holding a colon "
            "or a control character is shown as a JSON string in double quotes, e.g. "
            "'\"a:b.md\":3:text'; pass such a path to any tool exactly as shown.",
            GrepArgs, "search", ("path",),
        ),
        ToolSpec(
            "find",
            "Find files and directories by name beneath a directory. Prints one path per line, "
            "relative to the data root, sorted.",
            FindArgs, "search", ("path",),
        ),
        ToolSpec(
            "cat",
            "Print a text file, or just lines start_line..end_line of it (no line numbers added). "
            "Prefer a line range for long files; grep gives the line numbers.",
            CatArgs, "content", ("path",),
        ),
        ToolSpec("head", "Print the first lines of a text file.", HeadArgs, "content", ("path",)),
        ToolSpec("tail", "Print the last lines of a text file.", TailArgs, "content", ("path",)),
        ToolSpec(
            "ls",
            "List a directory, one entry per line; directories end with '/', symlinks with '@'. "
            "long=true adds type (f/d/l), size in bytes and modification time.",
            LsArgs, "search", ("path",),
        ),
        ToolSpec(
            "tree",
            "Show the directory structure beneath a path as a tree, to max_depth levels, with a "
            "count of directories and files.",
            TreeArgs, "search", ("path",),
        ),
        ToolSpec(
            "wc",
            "Count lines, words and bytes of one or more files, like `wc` (columns: lines words bytes path).",
            WcArgs, "content", ("paths",),
        ),
        ToolSpec(
            "preview",
            "A quick look at a file: a header line with its size in bytes and total line count, then "
            "its first lines. Use it to decide whether to read a file in full.",
            PreviewArgs, "content", ("path",),
        ),
    )
}
TOOL_NAMES: tuple[str, ...] = tuple(TOOLS)


def _clean_schema(node: Any) -> Any:
    """Compact pydantic's JSON schema for an LLM: no titles, Optional[X] rendered as X."""
    if isinstance(node, list):
        return [_clean_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "title":
            continue
        out[key] = _clean_schema(value)
    any_of = out.get("anyOf")
    if isinstance(any_of, list):
        non_null = [item for item in any_of if item != {"type": "null"}]
        if len(non_null) == 1 and len(non_null) < len(any_of):
            del out["anyOf"]
            merged = dict(non_null[0])
            merged.update(out)
            out = merged
            if out.get("default", 0) is None:
                del out["default"]
    return out


def json_schema(tool: str) -> dict[str, Any]:
    spec = TOOLS[tool]
    schema = _clean_schema(spec.model.model_json_schema())
    schema.pop("description", None)
    schema["additionalProperties"] = False
    schema.setdefault("required", [])
    return schema


@lru_cache(maxsize=1)
def _openai_tools_cached() -> tuple[dict[str, Any], ...]:
    return tuple(
        {
            "type": "function",
            "function": {"name": spec.name, "description": spec.description, "parameters": json_schema(name)},
        }
        for name, spec in TOOLS.items()
    )


def openai_tools() -> list[dict[str, Any]]:
    """The tools as OpenAI Chat Completions function tools (built once; a fresh copy per call)."""
    return copy.deepcopy(list(_openai_tools_cached()))


def _short(text: str, limit: int = _MAX_ECHO) -> str:
    text = str(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _summarise(tool: str, model: type[_Args], exc: ValidationError) -> str:
    problems: list[str] = []
    for error in exc.errors(include_url=False, include_input=False)[:5]:
        loc = ".".join(_short(str(part), 40) for part in error.get("loc", ())) or "arguments"
        msg = error.get("msg", "invalid")
        if error.get("type") == "extra_forbidden":
            msg = "unknown parameter"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        problems.append(f"{loc}: {_short(msg, 160)}")
    more = len(exc.errors()) - len(problems)
    if more > 0:
        problems.append(f"(+{more} more)")
    allowed = ", ".join(model.model_fields)
    required = [name for name, field in model.model_fields.items() if field.is_required()]
    hint = f"parameters: {allowed}" + (f" (required: {', '.join(required)})" if required else "")
    return _short(f"invalid arguments for {tool}: " + "; ".join(problems) + f". {hint}", 600)


def parse_arguments(tool: str, arguments_json: str | bytes | dict[str, Any] | None) -> _Args:
    """Validate one call; raise ToolArgumentError with a short, actionable message."""
    spec = TOOLS.get(tool) if isinstance(tool, str) else None
    if spec is None:
        raise ToolArgumentError(
            f"unknown tool {_short(repr(tool), 60)}; available tools: {', '.join(TOOL_NAMES)}"
        )
    if isinstance(arguments_json, dict):
        data: Any = arguments_json
    else:
        if isinstance(arguments_json, bytes):
            arguments_json = arguments_json.decode("utf-8", errors="replace")
        text = (arguments_json or "").strip()
        if len(text) > MAX_ARGUMENTS_JSON_CHARS:
            raise ToolArgumentError(f"arguments for {tool} are too long (max {MAX_ARGUMENTS_JSON_CHARS} characters)")
        if not text:
            text = "{}"
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:
            where = f" at position {exc.pos}" if isinstance(exc, json.JSONDecodeError) else ""
            raise ToolArgumentError(
                f"arguments for {tool} are not valid JSON{where}; send a JSON object like "
                f'{{"path": "."}}'
            ) from None
    if not isinstance(data, dict):
        raise ToolArgumentError(f"arguments for {tool} must be a JSON object, not {type(data).__name__}")
    try:
        return spec.model.model_validate(data)
    except ValidationError as exc:
        unknown = tuple(
            _short(str(e["loc"][0]), 40) for e in exc.errors(include_url=False, include_input=False)
            if e.get("type") == "extra_forbidden" and e.get("loc")
        )
        raise ToolArgumentError(_summarise(tool, spec.model, exc), unknown) from None
