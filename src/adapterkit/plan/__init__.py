"""The memory plan: a model built from its config on the meta device, each strategy applied to it
through the plugin protocols, and the bytes of weights, gradients, optimizer state, activations
(per-family rules) and logits added up before any weight is read."""
