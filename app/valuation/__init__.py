"""The valuation core: pure functions on arrays (torch tensors), no web or database imports."""
