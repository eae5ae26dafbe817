"""Appraise: data-marketplace valuation."""

__version__ = "0.1.0"
