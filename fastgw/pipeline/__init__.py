"""The request pipeline: the Middleware contract, Ctx (what middlewares see), the engine's
Exchange and Attempt, chain compilation, head builders, the protocol<->engine boundary,
and the engine itself (engine: client side and request phases; proxy: attempts).
See docs/architecture.md."""
