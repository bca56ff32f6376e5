"""Pure scheduling core: no Ray, no asyncio, an injected clock."""
