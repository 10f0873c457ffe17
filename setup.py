"""Build fastlstm's Cython kernels (src_pyx/) into private modules of the fastlstm package.

BLAS comes from the scipy-openblas32 wheel.  The extensions are compiled against its cblas
header but not linked to it: `import fastlstm` imports scipy_openblas32 first, which loads
the library with RTLD_GLOBAL, so the prefixed `scipy_cblas_*` symbols resolve at import.
This is the "preloading" mode the wheel documents for packages that ship without a copy.
"""

import sys

import numpy
import scipy_openblas32
from Cython.Build import cythonize
from setuptools import Extension, setup

if sys.platform == "darwin":
    openmp_compile, openmp_link = ["-Xpreprocessor", "-fopenmp"], ["-lomp"]
else:
    openmp_compile, openmp_link = ["-fopenmp"], ["-fopenmp"]


def extension(name):
    return Extension(
        f"fastlstm.{name}",
        [f"src_pyx/{name}.pyx"],
        include_dirs=[numpy.get_include(), scipy_openblas32.get_include_dir(), "src_pyx"],
        define_macros=[
            ("BLAS_SYMBOL_PREFIX", "scipy_"),
            ("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION"),
        ],
        # -ffp-contract=off: no a * b + c is fused behind the code's back, so the scalar
        # and vector paths compute the same operations (matmul.h, gates.h).
        extra_compile_args=["-O3", "-ffp-contract=off", *openmp_compile],
        extra_link_args=openmp_link,
    )


setup(
    ext_modules=cythonize(
        [extension("_packed"), extension("_rnn"), extension("_generate"), extension("_matmul"),
         extension("_forecast")],
        # ".": the kernel modules cimport fastlstm._packed's PackedModel (fastlstm/_packed.pxd).
        include_path=["src_pyx", "."],
        compiler_directives={
            "language_level": 3,
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
    ),
)
