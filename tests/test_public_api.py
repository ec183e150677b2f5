"""The declared public surface: what users may import, and that importing it is cheap."""

from __future__ import annotations

import subprocess
import sys

import pytest

import llmbackend
import llmbackend.backends
import llmbackend.testing


def test_top_level_exports_are_sorted_and_complete() -> None:
    """__all__ is sorted and every name in it resolves."""
    assert llmbackend.__all__ == sorted(llmbackend.__all__)
    for name in llmbackend.__all__:
        assert getattr(llmbackend, name) is not None, name


def test_top_level_export_set() -> None:
    """The public names are exactly the declared set; a change here is an API change."""
    assert set(llmbackend.__all__) >= {
        "open_service",
        "load_settings",
        "LlmService",
        "LlmSettings",
        "LlmBackendConfig",
        "BaseLlmBackend",
        "ILlmBackendPlugin",
        "register_plugin",
        "load_plugin",
        "get_plugin_info",
        "LlmBackendError",
        "AllBackendsFailedError",
        "ChatRequest",
        "LlmResponse",
        # memory and prompt builders
        "ConversationMemory",
        "DefaultPromptBuilder",
        "PromptBuilder",
        "PromptContext",
        "TokenCounter",
        "TranslationPromptBuilder",
        "default_token_counter",
        "prompt_builder_names",
        "register_prompt_builder",
        "unregister_prompt_builder",
        # the quick API
        "Answer",
        "AnswerStream",
        "AsyncChatSession",
        "ChatSession",
        "aask",
        "achat",
        "aclose_default_service",
        "ask",
        "astream",
        "chat",
        "configure",
        "stream",
    }
    assert not [name for name in llmbackend.__all__ if name.startswith("_")]


def test_every_root_export_resolves_including_the_lazy_quick_api() -> None:
    """Each name in llmbackend.__all__ is reachable, the lazily loaded quick API too, and
    an unknown name is an AttributeError naming it."""
    for name in llmbackend.__all__:
        assert getattr(llmbackend, name) is not None, name
    assert llmbackend.ask is llmbackend.quick.ask
    with pytest.raises(AttributeError, match="has no attribute 'nonexistent'"):
        _ = llmbackend.nonexistent


def test_backends_and_testing_exports_resolve() -> None:
    """llmbackend.backends (lazily) and llmbackend.testing export what they declare."""
    for module in (llmbackend.backends, llmbackend.testing):
        assert module.__all__ == sorted(module.__all__)
        for name in module.__all__:
            assert getattr(module, name) is not None, (module.__name__, name)


def test_import_loads_no_provider_module_and_no_optional_integration() -> None:
    """`import llmbackend` does not import provider modules, the CLI or test servers."""
    code = (
        "import sys, llmbackend; "
        "print(','.join(sorted(m for m in sys.modules "
        "if m.startswith(('llmbackend', 'tiktoken')))))"
    )
    loaded = (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        .stdout.strip()
        .split(",")
    )
    assert "llmbackend.backends.openai" not in loaded
    assert "llmbackend.cli" not in loaded
    assert "llmbackend.testing" not in loaded
    assert "llmbackend.quick" not in loaded  # the quick API loads on first use
    # Cache, limiter and ledger load when a service's configuration uses them.
    assert not {"llmbackend.state._cache", "llmbackend.state._limiter"} & set(loaded)
    assert "llmbackend.state._budget" not in loaded
    assert "tiktoken" not in loaded  # the tokenizer loads when a service needs it
    assert len(loaded) < 60
