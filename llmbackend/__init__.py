"""llmbackend: many LLM providers behind one dependable asyncio interface."""
