"""Errors the valuation core raises for inputs that cannot be valued as asked (not bugs)."""


class ValuationError(ValueError):
    """The inputs are well-formed files but the method cannot value them with these options."""
