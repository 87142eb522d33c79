"""PyTorch parts: the adaptor module, its losses (pure functions) and the training loop.

Nothing outside ``fit`` imports this package, so applying an adaptor never needs torch.
"""
