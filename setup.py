"""The one compiled part of Appraise, built by ``pip install``: a batched solver of small SPD systems
(app/valuation/shapley/_small_spd.c). It is optional: where no C compiler is found the build skips it, and the
code falls back to LAPACK (slower for TMC's small logistic models, the same values to rounding)."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "app.valuation.shapley._small_spd",
            ["app/valuation/shapley/_small_spd.c"],
            extra_compile_args=["-O3", "-ffp-contract=off"],
            optional=True,
        )
    ]
)
