"""The Gemini ``generateContent`` request encoding: chat requests to JSON bodies.

Pure functions, no I/O. A request that Gemini cannot express (a tool result that names no
function, tool-call arguments that are not a JSON object) raises :class:`InvalidRequestError`
before anything is sent.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from llmbackend.errors import InvalidRequestError
from llmbackend.models import ChatMessage, ChatRequest, ToolCall, ToolDefinition

__all__ = [
    "encode_chat",
    "encode_contents",
    "encode_tool",
    "encode_tool_config",
    "generated_call_id",
    "generation_config",
    "is_generated_call_id",
]

_TOOL_CHOICE_MODES: Mapping[str, str] = {
    "auto": "AUTO",
    "none": "NONE",
    "required": "ANY",
    "any": "ANY",
}
_GENERATION_FIELDS: Mapping[str, str] = {
    "temperature": "temperature",
    "top_p": "topP",
    "max_tokens": "maxOutputTokens",
    "stop": "stopSequences",
    "frequency_penalty": "frequencyPenalty",
    "presence_penalty": "presencePenalty",
}
#: Keys an object schema may have and still declare no parameters at all.
_EMPTY_SCHEMA_KEYS = frozenset(
    {"type", "properties", "required", "additionalProperties", "$schema"}
)
#: Ids made up for calls the API sent without one; never sent back to it.
_GENERATED_ID = re.compile(r"call_\d+")


def generated_call_id(index: int) -> str:
    """The id given to the ``index``-th function call of an answer that named no id."""
    return f"call_{index}"


def is_generated_call_id(call_id: str) -> bool:
    """Whether ``call_id`` was made up by :func:`generated_call_id` (so the API never saw it)."""
    return _GENERATED_ID.fullmatch(call_id) is not None


def _arguments_object(call: ToolCall, backend: str) -> dict[str, Any]:
    try:
        value = json.loads(call.arguments) if call.arguments.strip() else {}
    except ValueError as exc:
        raise InvalidRequestError(
            f"tool call {call.id!r} ({call.name}) has arguments that are not JSON",
            backend=backend,
        ) from exc
    if not isinstance(value, dict):
        raise InvalidRequestError(
            f"tool call {call.id!r} ({call.name}) has arguments that are not a JSON object",
            backend=backend,
        )
    return value


def _function_response(message: ChatMessage, name: str) -> dict[str, Any]:
    text = message.content or ""
    try:
        value: Any = json.loads(text)
    except ValueError:
        value = text
    # The API wants an object; anything else is wrapped the way Google's own SDK does.
    response = value if isinstance(value, dict) else {"result": value}
    part: dict[str, Any] = {"name": name, "response": response}
    if message.tool_call_id and not is_generated_call_id(message.tool_call_id):
        part["id"] = message.tool_call_id
    return {"functionResponse": part}


def _encode_assistant(message: ChatMessage, backend: str) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    if message.content or not message.tool_calls:
        parts.append({"text": message.content or ""})
    for call in message.tool_calls:
        function: dict[str, Any] = {"name": call.name, "args": _arguments_object(call, backend)}
        if call.id and not is_generated_call_id(call.id):
            function["id"] = call.id
        parts.append({"functionCall": function})
    return parts


def encode_contents(
    messages: Sequence[ChatMessage], backend: str
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """``contents`` and the ``systemInstruction`` (every system message, hoisted, in order).

    Consecutive tool results become one ``user`` turn of ``functionResponse`` parts, the
    shape the API expects after parallel calls; each names the function it answers, looked
    up from the assistant turn whose call has the message's ``tool_call_id``.
    """
    names: dict[str, str] = {}
    contents: list[dict[str, Any]] = []
    system: list[dict[str, Any]] = []
    previous_was_tool = False
    for message in messages:
        if message.role == "system":
            system.append({"text": message.content or ""})
            continue
        if message.role == "tool":
            name = names.get(message.tool_call_id or "") or message.name
            if not name:
                raise InvalidRequestError(
                    f"tool result {message.tool_call_id!r} answers no earlier assistant tool "
                    "call and names no function; Gemini needs the function name",
                    backend=backend,
                )
            part = _function_response(message, name)
            if previous_was_tool:
                contents[-1]["parts"].append(part)
            else:
                contents.append({"role": "user", "parts": [part]})
            previous_was_tool = True
            continue
        previous_was_tool = False
        if message.role == "assistant":
            names.update((call.id, call.name) for call in message.tool_calls)
            contents.append({"role": "model", "parts": _encode_assistant(message, backend)})
        else:
            contents.append({"role": "user", "parts": [{"text": message.content or ""}]})
    return contents, ({"parts": system} if system else None)


def encode_tool(tool: ToolDefinition) -> dict[str, Any]:
    """One ``functionDeclarations`` entry. A parameter schema without properties is left
    out: the API rejects an OBJECT schema whose properties are empty."""
    declaration: dict[str, Any] = {"name": tool.name}
    if tool.description:
        declaration["description"] = tool.description
    parameters = dict(tool.parameters)
    if parameters.get("properties") or set(parameters) - _EMPTY_SCHEMA_KEYS:
        declaration["parameters"] = parameters
    return declaration


def encode_tool_config(choice: str | Mapping[str, Any]) -> dict[str, Any]:
    """``toolConfig`` for an OpenAI-style ``tool_choice``."""
    if isinstance(choice, str):
        mode = _TOOL_CHOICE_MODES.get(choice.lower(), choice.upper())
        return {"functionCallingConfig": {"mode": mode}}
    function = choice.get("function")
    name = function.get("name") if isinstance(function, Mapping) else choice.get("name")
    config: dict[str, Any] = {"mode": "ANY"}
    if isinstance(name, str):
        config["allowedFunctionNames"] = [name]
    return {"functionCallingConfig": config}


def generation_config(
    parameters: Mapping[str, Any], response_format: Mapping[str, Any] | None
) -> dict[str, Any]:
    """``generationConfig`` from the resolved parameters and an OpenAI-style response format."""
    config = {
        _GENERATION_FIELDS[key]: value
        for key, value in parameters.items()
        if key in _GENERATION_FIELDS
    }
    kind = response_format.get("type") if response_format else None
    if response_format is not None and kind in ("json_object", "json_schema"):
        config["responseMimeType"] = "application/json"
        wrapper = response_format.get("json_schema")
        schema = wrapper.get("schema") if isinstance(wrapper, Mapping) else None
        if isinstance(schema, Mapping):
            config["responseSchema"] = dict(schema)
    return config


def encode_chat(
    request: ChatRequest, parameters: Mapping[str, Any], backend: str
) -> dict[str, Any]:
    """The body of a ``generateContent`` / ``streamGenerateContent`` call."""
    contents, system = encode_contents(request.messages, backend)
    body: dict[str, Any] = {"contents": contents}
    if system is not None:
        body["systemInstruction"] = system
    if request.tools:
        body["tools"] = [{"functionDeclarations": [encode_tool(t) for t in request.tools]}]
    if request.tool_choice is not None:
        body["toolConfig"] = encode_tool_config(request.tool_choice)
    config = generation_config(parameters, request.response_format)
    if config:
        body["generationConfig"] = config
    return body
