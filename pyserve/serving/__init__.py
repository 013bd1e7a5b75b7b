"""The serving layer no transport owns: how a request reaches the core and its answer comes
back, and what a frontend process knows of the models it serves."""
