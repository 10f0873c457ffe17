"""Load OpenBLAS from the scipy-openblas32 wheel and keep it to one thread.

fastlstm's kernels are compiled against the wheel's cblas header but not linked to it; importing
scipy_openblas32 loads the library with RTLD_GLOBAL, so the kernels' `scipy_cblas_*` symbols
resolve.  This OpenBLAS is fastlstm's own copy (NumPy bundles another), and fastlstm runs it
single-threaded: parallelism comes from fastlstm's OpenMP regions, so nothing oversubscribes.
"""

import scipy_openblas32

_lib = scipy_openblas32.dll  # the ctypes handle that get_openblas_config() opened at import
_lib.scipy_openblas_set_num_threads(1)
