"""The memory plan, before any weight is read.

A model is built from its config on the meta device, each strategy is applied to it through the
plugin protocols, and the bytes of weights, gradients, optimizer state, activations (per-family
rules) and logits are added up."""
