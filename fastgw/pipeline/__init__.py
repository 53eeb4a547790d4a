"""The request pipeline: Ctx, the Middleware contract, chain compilation, the engine."""
